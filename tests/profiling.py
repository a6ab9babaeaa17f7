"""Measure the peak size of the activations autograd keeps for backward.

Unlike process memory, this count is exact and the same on every machine, so tests can check
that joint training holds one model's activations at a time, not M models'.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class ActivationMeter:
    """Bytes of saved activations alive now and at the peak."""

    current: int = 0
    peak: int = 0
    storages: dict[int, list[int]] = field(default_factory=dict)  # pointer -> [bytes, refs]


def _is_weight(tensor: torch.Tensor) -> bool:
    """Parameters (and views of them, such as a transposed weight) are not activations."""
    return isinstance(tensor, torch.nn.Parameter) or isinstance(
        getattr(tensor, "_base", None), torch.nn.Parameter
    )


class _Saved:
    """One saved tensor; memory is counted once per storage, however often it is saved."""

    def __init__(self, tensor: torch.Tensor, meter: ActivationMeter) -> None:
        self.tensor, self.meter = tensor, meter
        self.key = None if _is_weight(tensor) else tensor.untyped_storage().data_ptr()
        if self.key is None:
            return
        entry = meter.storages.setdefault(self.key, [tensor.untyped_storage().nbytes(), 0])
        if entry[1] == 0:
            meter.current += entry[0]
            meter.peak = max(meter.peak, meter.current)
        entry[1] += 1

    def __del__(self) -> None:
        if self.key is None:
            return
        entry = self.meter.storages[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            self.meter.current -= entry[0]
            del self.meter.storages[self.key]


@contextmanager
def saved_activation_peak() -> Iterator[ActivationMeter]:
    """Within the block, count the memory autograd keeps for backward until its graph is
    freed: each storage once, the frozen weights not at all."""
    meter = ActivationMeter()
    with torch.autograd.graph.saved_tensors_hooks(
        lambda tensor: _Saved(tensor, meter), lambda saved: saved.tensor
    ):
        yield meter
