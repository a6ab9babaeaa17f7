"""The batch schedule: the learning-rate curve and which examples each optimizer step takes.

Both are functions of the step number alone, so a run resumed from a checkpoint sees exactly
the batches and learning rates it would have seen had it never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based): linear warmup, then decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def example_stream(start: int, stop: int, n: int, seed: int) -> list[int]:
    """Positions start..stop of the example stream: per-epoch seeded permutations, end to end."""
    orders: dict[int, torch.Tensor] = {}
    indices = []
    for position in range(start, stop):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        indices.append(int(orders[epoch][offset]))
    return indices


def batch_indices(
    step: int,
    batch_size: int,
    n: int,
    seed: int,
    lengths: list[int] | None = None,
    window: int = 0,
) -> list[int]:
    """The training examples of optimizer step `step`, a function of the step alone (exact
    resume). With length bucketing, each run of `window` batches of the stream is sorted by
    length, cut into batches, and those batches are taken in a seeded random order."""
    if not window or lengths is None:
        return example_stream(step * batch_size, (step + 1) * batch_size, n, seed)
    block, slot = divmod(step, window)
    span = window * batch_size
    members = sorted(
        example_stream(block * span, (block + 1) * span, n, seed), key=lengths.__getitem__
    )
    order = torch.randperm(window, generator=torch.Generator().manual_seed(seed * 7919 + block))
    first = int(order[slot]) * batch_size
    return members[first : first + batch_size]


class BatchSchedule:
    """The batches of a run over `items`: `batch_size` examples a step, shuffled with `seed`;
    with `window` > 0, length-bucketed over that many batches (`length`: one item's length,
    measured once for all items at the first step that needs it)."""

    def __init__(
        self,
        items: list,
        batch_size: int,
        seed: int,
        window: int = 0,
        length: Callable[[object], int] | None = None,
    ) -> None:
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.window, self.length = window, length
        self._lengths: list[int] | None = None

    def indices(self, step: int) -> list[int]:
        """The examples of optimizer step `step` (the same in every process and on resume)."""
        if self.window and self._lengths is None:
            self._lengths = [self.length(item) for item in self.items]
        lengths = self._lengths if self.window else None
        return batch_indices(
            step, self.batch_size, len(self.items), self.seed, lengths, self.window
        )
