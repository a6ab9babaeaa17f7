"""Soft-prompt steering: learned input embeddings [L, d] in front of every row (mask 1 over
them), or one prompt per row [N, L, d]."""

from __future__ import annotations

import torch

from softprompt.models import Backbone
from softprompt.steering.base import Steering, SteeringParts, cpu_read, flat_positions
from softprompt.steering.packing import (
    attention_mask_for,
    packed_positions,
    plan_prompt_packing,
    unpack,
)
from softprompt.steering.prefix import PrefixKV


class PromptSteering(Steering):
    """A soft prompt: `embedding` [L, d] for the whole batch, or [N, L, d] one per row."""

    def __init__(self, embedding: torch.Tensor) -> None:
        self.embedding = embedding

    @property
    def length(self) -> int:
        return int(self.embedding.shape[-2])

    @property
    def input_length(self) -> int:
        return self.length

    @property
    def per_row(self) -> bool:
        return self.embedding.ndim == 3

    def select(self, rows: torch.Tensor) -> Steering:
        if not self.per_row:
            return self
        return PromptSteering(self.embedding[rows.to(self.embedding.device)])

    def parts(self) -> SteeringParts:
        if self.per_row:
            raise ValueError("a per-row prompt has no single set of parts; select a row first")
        return SteeringParts(embeddings=self.embedding)

    def hidden(self, backbone, input_ids, attention_mask, read=None):
        device = backbone.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        embeds = backbone.embed(input_ids)
        read = cpu_read(read, device)
        soft = self.embedding.to(device=device, dtype=embeds.dtype)
        if backbone.kind == "causal" and not self.per_row and device.type == "cpu":
            # the prompt once per packed row, the texts after it: fewer positions, which is
            # what a CPU step costs; on a GPU a small model's step costs kernel launches, so
            # there the rows stay [prompt; text] (BENCHMARKS.md, "On a GPU")
            return _packed_hidden(backbone, soft, embeds, attention_mask, read), 0
        n, length = input_ids.shape[0], self.length
        soft = soft.expand(n, -1, -1) if self.per_row else soft.unsqueeze(0).expand(n, -1, -1)
        embeds = torch.cat([soft, embeds], dim=1)
        ones = torch.ones((n, length), dtype=attention_mask.dtype, device=device)
        mask = torch.cat([ones, attention_mask], dim=1)
        keep = flat_positions(read, embeds.shape[1], length)
        return backbone.body(embeds, mask, read=keep), length


def _packed_hidden(
    backbone: Backbone, prompt: torch.Tensor, embeds, attention_mask, read=None
) -> torch.Tensor:
    """Hidden states of the texts, run as rows of [prompt | text | text ...] in one pass
    (softprompt.steering.packing.plan_prompt_packing); returned in the batch's padded shape."""
    length = prompt.shape[0]
    packing = plan_prompt_packing(attention_mask, length)
    row_width = packing.mask.shape[-1]
    texts = embeds.new_zeros((packing.rows, row_width, embeds.shape[-1]))
    texts[packing.target] = embeds[packing.source]
    rows = torch.cat([prompt.unsqueeze(0).expand(packing.rows, -1, -1), texts[:, length:]], 1)
    mask = attention_mask_for(backbone.model, packing.mask, embeds.dtype)
    keep = None if read is None else packed_positions(packing, read, row_width)
    hidden = backbone.body(
        rows, mask, position_ids=packing.positions, segments=packing.segments, read=keep
    )
    return unpack(hidden, packing, embeds.shape[0])[:, : embeds.shape[1]]


def prompt_states(backbone: Backbone, prompt: torch.Tensor) -> PrefixKV:
    """The keys/values a soft prompt [L, d] leaves at every layer of a causal model
    ([layers, kv_heads, L, head_dim] each); for several prompts [P, L, d], one set per prompt
    ([layers, P, kv_heads, L, head_dim]).

    They depend only on the prompt (it comes first and attends to nothing after it), so one
    pass serves many texts: exact importance runs each ablated prompt once this way and the
    texts after it as after a prefix."""
    from transformers import DynamicCache

    many = prompt.ndim == 3
    prompts = prompt if many else prompt.unsqueeze(0)
    cache = DynamicCache(config=backbone.model.config)
    ones = torch.ones(prompts.shape[:2], dtype=torch.long, device=prompt.device)
    backbone.body(prompts, ones, past_key_values=cache)
    keys = torch.stack([layer.keys if many else layer.keys[0] for layer in cache.layers])
    values = torch.stack([layer.values if many else layer.values[0] for layer in cache.layers])
    return PrefixKV(keys, values)
