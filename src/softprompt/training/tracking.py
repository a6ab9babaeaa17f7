"""Experiment trackers (TensorBoard, Weights & Biases) through accelerate's trackers.

Off by default (`train.report_to: []`); the run's own metrics.jsonl is written either way.
Only the main process reports.
"""

from __future__ import annotations

import json
from pathlib import Path

from softprompt.errors import ConfigError

INSTALL_HINT = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def flatten(values: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """Nested dicts as one level of "a/b" keys; lists and None become JSON text."""
    flat: dict[str, float | int | str | bool] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def check_trackers(names: list[str]) -> None:
    """Fail before training starts when a named tracker's package is missing."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    for name in names:
        if name != "none" and not available[name]():
            raise ConfigError(
                f"train.report_to: {name} is not installed; {INSTALL_HINT[name]} or remove it"
            )


class Trackers:
    """The trackers named in `report_to` for one run; does nothing when there are none."""

    def __init__(
        self, names: list[str], out_dir: Path, config: dict, *, enabled: bool = True
    ) -> None:
        self.names = [name for name in names if name != "none"]
        self.accelerator = None
        if not self.names or not enabled:
            return
        check_trackers(self.names)
        from accelerate import Accelerator

        self.accelerator = Accelerator(log_with=self.names, project_dir=out_dir / "tracking")
        self.accelerator.init_trackers(
            "softprompt", config=flatten(config), init_kwargs={"wandb": {"name": out_dir.name}}
        )

    def log(self, values: dict, step: int) -> None:
        if self.accelerator is not None:
            numbers = {k: v for k, v in flatten(values).items() if isinstance(v, (int, float))}
            self.accelerator.log(numbers, step=step)

    def close(self) -> None:
        if self.accelerator is not None:
            self.accelerator.end_training()
            self.accelerator = None
