"""The training state: everything that changes while a prompt trains, and how a run starts it.

A checkpoint (softprompt.training.run_dir) is exactly this state, so a resumed run continues
from the same module, optimizer moments, learning-rate schedule and best-so-far bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from softprompt.config import TrainSettings
from softprompt.methods.base import TrainableModule
from softprompt.training.schedule import lr_factor


@dataclass
class TrainState:
    """Everything that changes during training; a checkpoint is exactly this."""

    module: TrainableModule  # the method's trainable parameters (softprompt.methods)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    step: int = 0
    best_value: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)
    last_losses: dict[str, float] = field(default_factory=dict)

    @classmethod
    def fresh(cls, module: torch.nn.Module, settings: TrainSettings, maps_lr: float) -> TrainState:
        """Step 0 for `module`: AdamW over its parameters and the warmup-then-decay schedule of
        `settings`. The rate is `settings.rate`; a method's own kinds of parameter
        (`module.lr_scales()`, e.g. an encoder) take that rate times their scale, and the
        cross-model maps (`maps.*`) their own rate `maps_lr`."""
        optimizer = torch.optim.AdamW(
            parameter_groups(module, settings.rate, maps_lr),
            lr=settings.rate,
            weight_decay=settings.weight_decay,
        )
        total, warmup, schedule = settings.steps, settings.warmup_steps, settings.schedule
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total, warmup, schedule)
        )
        return cls(module=module, optimizer=optimizer, scheduler=scheduler)

    def record_eval(self, dev: dict, value: float, lower_is_better: bool) -> bool:
        """Note an evaluation at this step (`dev`: the mean metrics, `value`: the one that
        picks the best); returns True when it is the best so far."""
        self.history.append({"step": self.step, "dev": dev})
        best = self.best_value
        if best is None or (value < best if lower_is_better else value > best):
            self.best_value, self.best_step = value, self.step
            self.evals_without_improvement = 0
            return True
        self.evals_without_improvement += 1
        return False

    @property
    def best_dev(self) -> dict | None:
        """The mean dev metrics of the best evaluation so far (None before the first)."""
        return next((h["dev"] for h in self.history if h["step"] == self.best_step), None)


def parameter_groups(module: torch.nn.Module, rate: float, maps_lr: float) -> list[dict]:
    """AdamW's groups, each named: `prompt` (what no scale names) at `rate`, one per prefix of
    `module.lr_scales()` at `rate` times its scale, and `maps` at `maps_lr`; empty ones (and
    scales of 1) left out. Parameters keep the module's order within each group."""
    own = module.lr_scales() if hasattr(module, "lr_scales") else {}
    scales = {prefix: scale for prefix, scale in own.items() if scale != 1.0}  # 1: no group
    names = {"prompt": [], **{prefix: [] for prefix in scales}, "maps.": []}
    for name, parameter in module.named_parameters():
        prefix = next((p for p in [*scales, "maps."] if name.startswith(p)), "prompt")
        names[prefix].append(parameter)
    rates = {"prompt": rate, **{p: rate * s for p, s in scales.items()}, "maps.": maps_lr}
    return [
        {"params": params, "lr": rates[prefix], "name": prefix.rstrip(".")}
        for prefix, params in names.items()
        if params
    ]
