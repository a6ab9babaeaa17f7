"""Measure the peak size of the activations autograd keeps for backward.

Unlike process memory, this count is exact and the same on every machine, so tests can check
that joint training holds one model's activations at a time, not M models'.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class ActivationMeter:
    """Bytes of saved activations alive now and at the peak."""

    current: int = 0
    peak: int = 0


class _Saved:
    def __init__(self, tensor: torch.Tensor, meter: ActivationMeter) -> None:
        self.tensor, self.meter = tensor, meter
        self.size = tensor.numel() * tensor.element_size()
        meter.current += self.size
        meter.peak = max(meter.peak, meter.current)

    def __del__(self) -> None:
        self.meter.current -= self.size


@contextmanager
def saved_activation_peak() -> Iterator[ActivationMeter]:
    """Within the block, count every tensor autograd saves until its graph is freed."""
    meter = ActivationMeter()
    with torch.autograd.graph.saved_tensors_hooks(
        lambda tensor: _Saved(tensor, meter), lambda saved: saved.tensor
    ):
        yield meter
