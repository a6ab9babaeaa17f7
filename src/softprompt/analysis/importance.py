"""How much each prompt token matters to a model: ablate it and measure the change.

Exact importance evaluates every ablated variant of the prompt on the data, many variants per
forward pass (pairs of variant x example share batches), instead of one full pass per token.
The gradient estimate needs one backward pass: delta_loss_i ~ (ablated_i - p_i) . dL/dp_i.
"""

from __future__ import annotations

from pathlib import Path

import torch

from softprompt.progress import Progress
from softprompt.steering.base import Steering
from softprompt.steering.prompt import PromptSteering, prompt_states
from softprompt.tasks.classification import ClassificationTask, EncodedExample

ABLATIONS = ("zero", "mean", "remove")


def ablated_variants(prompt: torch.Tensor, mode: str) -> torch.Tensor:
    """[L, L', d]: variant i is the prompt with token i zeroed, set to the mean, or removed."""
    if mode not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}")
    length = prompt.shape[0]
    if mode == "remove":
        keep = ~torch.eye(length, dtype=torch.bool)
        return torch.stack([prompt[keep[i]] for i in range(length)])
    variants = prompt.unsqueeze(0).repeat(length, 1, 1)
    fill = torch.zeros_like(prompt[0]) if mode == "zero" else prompt.mean(dim=0)
    variants[torch.arange(length), torch.arange(length)] = fill
    return variants


@torch.no_grad()
def variant_metrics(
    task: ClassificationTask,
    variants: torch.Tensor,
    encoded: list[EncodedExample],
    batch_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Mean loss and accuracy of each prompt variant [V, L, d] over all examples, with
    (variant, example) pairs packed into shared batches. In a causal model each variant's
    keys/values are computed once, and the texts run after them."""
    count = variants.shape[0]
    steer: Steering = PromptSteering(variants)
    if task.backbone.kind == "causal":
        device, dtype = task.backbone.device, task.backbone.input_embeddings.weight.dtype
        steer = prompt_states(task.backbone, variants.to(device=device, dtype=dtype))
    lengths = [max(len(ids) for ids, _, _ in enc.rows) for enc in encoded]
    pairs = sorted(
        ((v, e) for v in range(count) for e in range(len(encoded))), key=lambda p: lengths[p[1]]
    )
    loss_sum = torch.zeros(count)
    correct = torch.zeros(count)
    labels = torch.tensor([enc.label for enc in encoded])
    what = f"importance ({Path(task.backbone.name).name}, {count} variants)"
    with Progress(what, len(pairs), unit="ablated examples", transient=True) as progress:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            variant_ids = torch.tensor([v for v, _ in chunk])
            example_ids = torch.tensor([e for _, e in chunk])
            batch = task.collate([encoded[e] for e in example_ids.tolist()])
            scores = task.class_scores(steer.select(variant_ids), batch).float().cpu()
            losses = task.losses(scores, labels[example_ids])
            loss_sum.index_add_(0, variant_ids, losses)
            correct.index_add_(0, variant_ids, (scores.argmax(1) == labels[example_ids]).float())
            progress.advance(len(chunk))
    return {"loss": loss_sum / len(encoded), "accuracy": correct / len(encoded)}


def exact_importance(
    task: ClassificationTask,
    prompt: torch.Tensor,
    encoded: list[EncodedExample],
    mode: str = "zero",
    batch_size: int = 32,
) -> dict[str, torch.Tensor | float]:
    """Importance of every token: loss(ablated) - loss(full) and accuracy(full) - accuracy(ablated)
    (both positive when the token helps), and the loss form normalised by the base loss."""
    variants = ablated_variants(prompt.float(), mode)
    if mode == "remove":
        base = variant_metrics(task, prompt.float()[None], encoded, batch_size)
        ablated = variant_metrics(task, variants, encoded, batch_size)
    else:
        both = variant_metrics(
            task, torch.cat([prompt.float()[None], variants]), encoded, batch_size
        )
        base = {k: v[:1] for k, v in both.items()}
        ablated = {k: v[1:] for k, v in both.items()}
    base_loss = float(base["loss"][0])
    loss_importance = ablated["loss"] - base_loss
    return {
        "base_loss": base_loss,
        "base_accuracy": float(base["accuracy"][0]),
        "loss": loss_importance,
        "accuracy": float(base["accuracy"][0]) - ablated["accuracy"],
        "normalised": loss_importance / max(base_loss, 1e-12),
    }


def gradient_importance(
    task: ClassificationTask,
    prompt: torch.Tensor,
    encoded: list[EncodedExample],
    mode: str = "zero",
    batch_size: int = 32,
) -> torch.Tensor:
    """First-order estimate of each token's loss importance from one backward pass.
    Removal is estimated as zeroing (the first-order view of a missing token)."""
    point = prompt.detach().float().clone().requires_grad_(True)
    what = f"importance gradient ({Path(task.backbone.name).name})"
    with Progress(what, len(encoded), unit="examples", transient=True) as progress:
        for start in range(0, len(encoded), batch_size):
            batch = task.collate(encoded[start : start + batch_size])
            scores = task.class_scores(point, batch)
            (task.losses(scores, batch.labels).sum() / len(encoded)).backward()
            progress.advance(len(batch.labels))
    target = point.detach().mean(dim=0, keepdim=True) if mode == "mean" else 0.0
    return ((target - point.detach()) * point.grad).sum(dim=-1)
