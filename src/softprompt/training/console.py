"""What the user sees of a run: the progress bar, warnings, and how a signal stops it.

Everything goes to stderr, so stdout stays free for a command's result. SIGINT/SIGTERM do not
stop a step half-way: they are noted, and the trainer stops after the step with a checkpoint.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from softprompt.errors import SoftpromptError


class Interrupted(SoftpromptError):
    """Training stopped by a signal after saving a checkpoint: asked for, so not an error (the
    CLI prints the message without `error:`), but exit 130 says the run did not finish."""

    exit_code = 130
    is_error = False


class DeferredSignals:
    """Turn SIGINT/SIGTERM into a flag checked between steps (a second SIGINT still aborts)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def warn(message: str) -> None:
    """Print a warning on stderr (the run goes on): one line, never wrapped or cut inside a
    path, and with the message's own brackets shown as they are."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(
        f"[yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False
    )


def _describe_dev(dev: dict) -> str:
    """Dev metrics for the progress bar: the mean, and each model's when there are several."""
    key = "accuracy" if "accuracy" in dev["mean"] else "perplexity"
    text = f"dev loss {dev['mean']['loss']:.3f} {key} {dev['mean'][key]:.3f}"
    if len(dev["models"]) > 1:
        per_model = " ".join(f"{Path(n).name}:{m[key]:.2f}" for n, m in dev["models"].items())
        text += f" ({per_model})"
    return text


class ProgressBar:
    """A rich progress bar on stderr with live loss and dev metrics (or nothing if disabled)."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self.enabled = enabled
        self.total, self.completed = total, completed
        self.fields = {"loss": "", "dev": ""}

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[loss]} {task.fields[dev]}"),
                console=Console(stderr=True),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                "train", total=self.total, completed=self.completed, **self.fields
            )
        return self

    def update(self, step: int, loss: float | None = None, dev: dict | None = None) -> None:
        """Move the bar to `step`; show the newest loss and dev metrics when given."""
        if not self.enabled:
            return
        if loss is not None:
            self.fields["loss"] = f"loss {loss:.4f}"
        if dev is not None:
            self.fields["dev"] = _describe_dev(dev)
        self._progress.update(self._task, completed=step, **self.fields)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._progress.__exit__(*exc)
