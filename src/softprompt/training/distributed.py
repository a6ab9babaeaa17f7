"""Data-parallel training across processes started by `torchrun` or `accelerate launch`.

Every process holds the frozen models and the same prompt (same seed). Each step, every
process takes its share of the global batch (the batch itself depends only on the step), the
gradients are summed across processes, and all take the same optimizer step. Only the main
process writes files. accelerate sets up the process group: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: rank `rank` of `world` (1 when not distributed)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This process's share of a batch: every `world`-th item, starting at `rank`."""
        return items[self.rank :: self.world]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all processes (in place; returned for convenience)."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def wait_for_everyone(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def launched_processes(device: str = "auto") -> Processes:
    """The processes of this run: one, unless a launcher set WORLD_SIZE above 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    from accelerate import PartialState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    return Processes(state.process_index, state.num_processes, state.device)
