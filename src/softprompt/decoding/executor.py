"""Runs a step's plan: the packed inputs (decoding rows' last tokens, prefilling rows' input
chunks) through the model once, each row attending to its own blocks (`rows.StepAttention`,
reached through the model's attention function as `row_cache=`); returns the logits read."""

from __future__ import annotations

import torch

from softprompt.decoding.blocks import BlockPool
from softprompt.decoding.rows import StepAttention
from softprompt.decoding.scheduler import StepPlan
from softprompt.models import Backbone


def execute(backbone: Backbone, pool: BlockPool, plan: StepPlan) -> torch.Tensor:
    """[len(plan.read), vocab] logits of the plan's read positions."""
    device = backbone.device
    embeds = []
    if plan.decode:
        last = torch.tensor([[r.last for r in plan.decode]], dtype=torch.long, device=device)
        embeds.append(backbone.embed(last))
    embeds += [c.row.inputs[None, c.start : c.start + c.count] for c in plan.chunks]
    out = backbone.model(
        inputs_embeds=torch.cat(embeds, dim=1),
        position_ids=plan.positions.to(device)[None],
        attention_mask=torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device),
        use_cache=False,
        logits_to_keep=plan.read.to(device),
        row_cache=StepAttention(pool, plan),
    )
    return out.logits[0]
