"""Progress of long work on stderr, one way for every command (training, explain, compress, the
batch files of predict and generate).

On a terminal, a live rich bar. Anywhere else (a log file, CI, nohup, a pipe) a live bar
prints nothing until it ends, so instead plain lines that a log reads well, never a `\\r`:
one at each tenth of the work and at least every LOG_SECONDS while it goes on, e.g.
`importance (llama): 40/120 ablated examples (33%), 48 s`.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Column
from rich.text import Text

LOG_TENTHS = 10  # a log line each time the work passes a tenth
LOG_SECONDS = 30.0  # and one at least this often while it goes on


def stderr_is_terminal() -> bool:
    """Whether stderr shows a live bar (rich's test, so FORCE_TERMINAL and the like count)."""
    return Console(stderr=True).is_terminal


def duration(seconds: float) -> str:
    """`48 s`, `3 min 05 s`, `1 h 02 min`: elapsed time as a log line shows it."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


class Progress:
    """Progress of one piece of work: `update(done, total, note)` as it goes.

    `live` chooses the rich bar (default: when stderr is a terminal), drawn on `console`
    (default: a new one on stderr); `enabled=False` shows nothing. `note` is free text after
    the counter (the training loss); in a log line it comes after the counter and the time,
    so the counter is never the part that is cut."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        *,
        unit: str = "",
        completed: int = 0,
        enabled: bool = True,
        live: bool | None = None,
        transient: bool = False,
        console: Console | None = None,
    ) -> None:
        self.what, self.total, self.unit, self.done = what, total, unit, completed
        self.enabled, self.transient, self.note = enabled, transient, ""
        self.live = enabled and (stderr_is_terminal() if live is None else live)
        self.console = console
        self._started = self._logged_at = time.monotonic()
        self._logged_tenth, self._logged_done = self._tenth(), completed

    def __enter__(self) -> Progress:
        if self.live:
            self._bar = _live_bar(self.transient, self.console or Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task(
                self.what, total=self.total, completed=self.done, note=""
            )
        return self

    def update(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """Record `done` units of `total` (unchanged when None) and show them."""
        self.done = done
        self.total = total if total is not None else self.total
        self.note = note if note is not None else self.note
        if self.live:
            self._bar.update(self._task, completed=done, total=self.total, note=self.note)
        elif self.enabled:
            self._log_if_due()

    def advance(self, count: int = 1) -> None:
        """`count` more units done."""
        self.update(self.done + count)

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self._bar.__exit__(*exc)

    def line(self) -> str:
        """The log line for now: `what: done/total unit (pct%), elapsed, note`."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        text = f"{self.what}: {count}" + (f" {self.unit}" if self.unit else "")
        if self.total:
            text += f" ({100 * self.done // self.total}%)"
        text += f", {duration(time.monotonic() - self._started)}"
        return text + (f", {self.note}" if self.note else "")

    def _tenth(self) -> int:
        return LOG_TENTHS * self.done // self.total if self.total else 0

    def _log_if_due(self) -> None:
        """A line when the work passed a tenth, or LOG_SECONDS after the last line."""
        now, tenth = time.monotonic(), self._tenth()
        late = now - self._logged_at >= LOG_SECONDS and self.done != self._logged_done
        if tenth > self._logged_tenth or late:
            self._logged_tenth, self._logged_at, self._logged_done = tenth, now, self.done
            sys.stderr.write(self.line() + "\n")
            sys.stderr.flush()


class _NoteColumn(ProgressColumn):
    """The task's `note` on one line, cut with an ellipsis when the terminal is too narrow."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(ratio=1))  # may wrap, so the one rich shrinks

    def render(self, task) -> Text:
        return Text(task.fields.get("note", ""), no_wrap=True, overflow="ellipsis")


def _live_bar(transient: bool, console: Console) -> RichProgress:
    """The rich bar: description, bar, counter, times, then the note. Only the note's column
    may shrink, so a long note (several models' dev metrics) never squeezes the counter out
    of a narrow terminal (rich collapses only the columns that may wrap)."""

    def fixed() -> Column:
        return Column(no_wrap=True)

    return RichProgress(
        TextColumn("[bold]{task.description}", table_column=fixed()),
        BarColumn(bar_width=20, table_column=fixed()),
        MofNCompleteColumn(table_column=fixed()),
        TimeElapsedColumn(table_column=fixed()),
        TimeRemainingColumn(table_column=fixed()),
        _NoteColumn(),
        console=console,
        transient=transient,
        redirect_stdout=False,
        redirect_stderr=False,
    )
