"""One run of a study's grid, and the study's progress: a line per finished run and the total.

A run is a training into its own folder: a folder with a complete, readable summary.json is
done (the summary is written atomically, last); one with checkpoints
but no summary was stopped (Ctrl-C, a killed worker) and resumes from its newest checkpoint, so
however often a run is started it is counted once and its result is that of one straight run.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from softprompt.config import load_config
from softprompt.progress import Progress, duration
from softprompt.training.run_dir import read_summary
from softprompt.training.trainer import train


def is_done(run_dir: Path) -> bool:
    """Whether the run in `run_dir` finished: it holds a complete summary."""
    return read_summary(run_dir) is not None


def train_run(
    config_path: str, overrides: list[str], run_dir: Path, allow_changes: bool, progress: bool
) -> dict:
    """Train the run in `run_dir` to its end, resuming it if it was stopped; its summary."""
    config = load_config(config_path, overrides)
    resume = (run_dir / "checkpoints").is_dir()
    return train(config, run_dir, resume=resume, allow_changes=allow_changes, progress=progress)


def run_metric(summary: dict, metric: str) -> float | None:
    """The run's score in the study: its best prompt's mean dev `metric`."""
    return (summary.get("best_dev") or {}).get(metric)


class StudyProgress:
    """`run 3/4 set1-2models/train1-init0: dev accuracy 0.812 in 14 s; about 14 s left` on
    stderr as each run ends; with `bar`, also a live done/total bar on a terminal (only where
    no run draws its own). The time left is the mean wall time per run finished so far (runs
    side by side included) times the runs still to go."""

    def __init__(
        self, total: int, done: int, metric: str, enabled: bool = True, bar: bool = False
    ) -> None:
        self.total, self.done, self.metric, self.enabled = total, done, metric, enabled
        self.finished_here, self._started = 0, time.monotonic()
        self._console = Console(stderr=True, soft_wrap=True, highlight=False)
        self._bar = Progress(  # live or nothing: the log lines are `finished`'s
            "study", total, unit="runs", completed=done, enabled=enabled and bar
        )
        self._bar.console = self._console

    def __enter__(self) -> StudyProgress:
        self._bar.__enter__()
        return self

    def finished(self, name: str, summary: dict, seconds: float) -> None:
        """Count run `name` done and print its line."""
        self.done += 1
        self.finished_here += 1
        if self._bar.live:
            self._bar.update(self.done)
        if self.enabled:
            self._console.print(escape(self.line(name, summary, seconds)))

    def line(self, name: str, summary: dict, seconds: float) -> str:
        score = run_metric(summary, self.metric)
        shown = f"{score:.4f}" if isinstance(score, float) else "n/a"
        text = f"run {self.done}/{self.total} {name}: dev {self.metric} {shown} in "
        text += duration(seconds)
        left = self.total - self.done
        if left:
            per_run = (time.monotonic() - self._started) / self.finished_here
            text += f"; about {duration(per_run * left)} left"
        return text

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)
