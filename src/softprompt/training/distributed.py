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

from softprompt.config import TrainSettings
from softprompt.errors import ConfigError
from softprompt.models import resolve_device


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

    def sum_gradients(self, module: torch.nn.Module) -> None:
        """Sum each parameter's gradient over all processes (one without a gradient adds 0)."""
        for parameter in module.parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            self.sum(parameter.grad)

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over all processes (e.g. the losses of each process's share)."""
        summed = self.sum(torch.tensor(list(values.values()), device=self.device))
        return dict(zip(values, summed.tolist()))

    def any(self, flag: bool) -> bool:
        """True when `flag` holds in any process (so that all stop at the same step)."""
        if self.world == 1:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)) > 0)

    def wait_for_everyone(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def training_device(self, settings: TrainSettings) -> torch.device:
        """The training device; under a launcher each process takes its own (e.g. cuda:RANK)."""
        if self.world == 1:
            return resolve_device(settings.device)
        if settings.devices:
            raise ConfigError(
                "train.devices spreads models over devices within one process; with several "
                "processes (torchrun / accelerate launch) each uses its own device: remove it"
            )
        if settings.batch_size < self.world:
            raise ConfigError(
                f"train.batch_size ({settings.batch_size}) is smaller than the number of "
                f"processes ({self.world}); raise it or launch fewer processes"
            )
        return self.device


def launched_processes(device: str = "auto") -> Processes:
    """The processes of this run: one, unless a launcher set WORLD_SIZE above 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    from accelerate import PartialState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    return Processes(state.process_index, state.num_processes, state.device)
