"""Shorter prompts: keep only some tokens (those a model owns, or the most important)."""

from __future__ import annotations

import torch

from softprompt.errors import UsageError
from softprompt.methods.prompt import SoftPrompt

MODES = ("remove", "mask")


def compress(prompt: SoftPrompt, keep: list[int], mode: str = "remove") -> SoftPrompt:
    """A new prompt with only `keep` tokens: the others deleted (remove) or zeroed (mask).
    Its metadata records what was kept."""
    if mode not in MODES:
        raise UsageError(f"unknown compression mode {mode!r}; use remove or mask")
    kept = sorted(set(keep))
    if not kept or kept[0] < 0 or kept[-1] >= prompt.length:
        raise UsageError(f"tokens to keep must be between 0 and {prompt.length - 1}, got {keep}")
    embedding = _keep_rows(prompt.embedding, kept, mode)
    views = {name: _keep_rows(view, kept, mode) for name, view in prompt.views.items()}
    training = {
        **prompt.training,
        "compression": {"kept": kept, "mode": mode, "source_length": prompt.length},
    }
    return SoftPrompt(
        embedding=embedding,
        models=prompt.models,
        task=prompt.task,
        init=prompt.init,
        training=training,
        views=views,
    )


def _keep_rows(matrix: torch.Tensor, kept: list[int], mode: str) -> torch.Tensor:
    if mode == "remove":
        return matrix[kept].clone()
    masked = torch.zeros_like(matrix)
    masked[kept] = matrix[kept]
    return masked


def top_tokens(importance: torch.Tensor, count: int) -> list[int]:
    """Indices of the `count` most important tokens."""
    count = max(1, min(count, importance.shape[0]))
    return sorted(importance.topk(count).indices.tolist())
