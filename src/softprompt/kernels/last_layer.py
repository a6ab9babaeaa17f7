"""The last layer's feed-forward block, run only at the positions whose output is read.

A classification step reads the final hidden state at the label positions only. Every earlier
layer must run at every position (later layers attend to all of them), but in the last one
nothing downstream attends: its MLP (three quarters of a layer's matmuls in Llama-style
models) can skip the other positions. Their outputs then hold the residual stream without the
MLP's share, and must not be read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class _AtRows(nn.Module):
    """A position-wise module applied at some flat positions only (zeros elsewhere)."""

    def __init__(self, inner: nn.Module, rows: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.rows = rows

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        picked = self.inner(flat.index_select(0, self.rows))
        out = picked.new_zeros((flat.shape[0], picked.shape[-1]))
        return out.index_copy(0, self.rows, picked).view(*hidden.shape[:-1], -1)


def _last_mlp(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(last decoder layer, its dense MLP), or None where the layout is not a known one."""
    base = getattr(model, "base_model", model)
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    mlp = getattr(layers[-1], "mlp", None)
    # dense position-wise MLPs only (LlamaMLP, GPT2MLP, ...); mixtures of experts return more
    if mlp is None or not type(mlp).__name__.endswith("MLP"):
        return None
    return layers[-1], mlp


@contextmanager
def last_mlp_at(model: nn.Module, rows: torch.Tensor | None) -> Iterator[None]:
    """Within the block, the model's last MLP runs only at `rows` (flat positions, row *
    width + column, of the next forward call). No-op for None, unknown layouts and models
    that recompute activations (checkpointing would replay the layer without the cut)."""
    found = _last_mlp(model)
    if rows is None or found is None or getattr(model, "is_activation_checkpointing", False):
        yield
        return
    layer, mlp = found
    layer.mlp = _AtRows(mlp, rows)
    try:
        yield
    finally:
        layer.mlp = mlp
