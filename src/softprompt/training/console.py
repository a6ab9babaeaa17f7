"""What the user sees of a run: the progress bar, warnings, and how a signal stops it.

Everything goes to stderr, so stdout stays free for a command's result. SIGINT/SIGTERM do not
stop a step half-way: they are noted, and the trainer stops after the step with a checkpoint.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from softprompt.errors import SoftpromptError
from softprompt.progress import Progress


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
    key = next((k for k in ("accuracy", "agreement", "perplexity") if k in dev["mean"]), None)
    text = f"dev loss {dev['mean']['loss']:.3f}"
    if key is None:  # a loss alone (self-study: KL per token)
        return text
    text += f" {key} {dev['mean'][key]:.3f}"
    if len(dev["models"]) > 1:
        per_model = " ".join(f"{Path(n).name}:{m[key]:.2f}" for n, m in dev["models"].items())
        text += f" ({per_model})"
    return text


class ProgressBar:
    """The run's steps on stderr (`softprompt.progress`: a live bar on a terminal, log lines
    elsewhere) with the newest loss and dev metrics after the step counter; nothing if
    disabled."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        self._progress = Progress(
            "train", total, unit="steps", completed=completed, enabled=enabled
        )
        self.fields = {"loss": "", "dev": ""}

    def __enter__(self) -> ProgressBar:
        self._progress.__enter__()
        return self

    def update(self, step: int, loss: float | None = None, dev: dict | None = None) -> None:
        """Move to `step`; show the newest loss and dev metrics when given."""
        if loss is not None:
            self.fields["loss"] = f"loss {loss:.4f}"
        if dev is not None:
            self.fields["dev"] = _describe_dev(dev)
        self._progress.update(step, note=" ".join(f for f in self.fields.values() if f))

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)
