"""The run directory: what a training run leaves on disk, and how a resumed run reads it back.

    config.yaml      the resolved config of the run
    config-changes.jsonl  changes allowed on resume (`--allow-changes`), with their step
    train.lock       locked (flock) while a process trains the run; holds that process's pid
    metrics.jsonl    one JSON line per train step and per evaluation (each line one write; a
                     torn last line, from a kill inside it, is left out when read)
    checkpoints/     step-NNNNNNNN.safetensors: the whole TrainState, the newest few kept
    prompt.safetensors, last.safetensors, summary.json (written last: a run is finished
                     exactly when it holds a complete summary.json, see `read_summary`)

Every file is replaced atomically (softprompt.files), so a process killed at any moment leaves
each file absent, as it was, or complete.

Only the main process writes; every process reads checkpoints the same way, so all resume
from the same step. A checkpoint's layout (tensor names, the "state" metadata) is a file
format: runs written by older versions must still resume.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from softprompt.config import TrainConfig, config_to_dict
from softprompt.errors import SoftpromptError, UsageError
from softprompt.files import (
    append_line,
    atomic_text_file,
    read_json_lines,
    read_safetensors,
    write_safetensors_atomic,
    write_text_atomic,
)
from softprompt.training.console import warn
from softprompt.training.state import TrainState
from softprompt.training.tracking import Trackers

try:
    import fcntl
except ImportError:  # not on POSIX: runs are not locked
    fcntl = None

CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2
LOCK_FILE = "train.lock"
SUMMARY_FILE = "summary.json"


def read_summary(run_dir: str | Path) -> dict | None:
    """The summary of a finished run in `run_dir`; None while it has none, or none that is
    complete (a torn file left by a version that wrote it in place): the run is not done."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


class RunDir:
    """One run's directory `path`; `is_main`: whether this process is the one that writes."""

    def __init__(self, path: str | Path, is_main: bool = True) -> None:
        self.path = Path(path)
        self.is_main = is_main

    @property
    def checkpoints(self) -> Path:
        """The folder of the run's checkpoints."""
        return self.path / CHECKPOINT_DIR

    @property
    def metrics_path(self) -> str | Path:
        """Where this process appends its metrics (nowhere but in the main process)."""
        return self.path / "metrics.jsonl" if self.is_main else os.devnull

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Own the run directory while the block runs: an exclusive flock on train.lock, so a
        second training into the same folder fails at once instead of interleaving its metrics.
        The OS drops the lock when the process ends, also on a crash or SIGKILL; the file stays.
        Only the main process locks (the others of a launch share its run)."""
        if not self.is_main or fcntl is None:
            yield
            return
        self.create()
        with open(self.path / LOCK_FILE, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                raise RunBusyError(
                    f"{self.path} is being trained by another process (pid {owner}); wait for "
                    "it or choose another --out"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield  # closing the file releases the lock

    def check_target(self) -> None:
        """Before anything is loaded: the run folder must be a folder, or creatable (a file in
        its place, or under a file, is refused at once, not after the models load)."""
        if not self.is_main:
            return
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out {self.path} is a file; give a folder for the run")
        above = next((p for p in self.path.absolute().parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise UsageError(f"--out {self.path}: {above} is a file, so no folder fits there")

    def create(self) -> None:
        """Make the run folder, with a one-line error when the system refuses (no such parent,
        read-only or no permission)."""
        self.check_target()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"--out {self.path} cannot be created ({exc.strerror or exc}); choose a folder "
                "where you can write"
            ) from exc

    def refuse_existing(self) -> None:
        """Stop a new run from overwriting one that can still be resumed."""
        if any(self.checkpoints.glob("step-*.safetensors")):
            raise UsageError(
                f"{self.path} already holds a training run; continue it with --resume "
                f"{self.path} or choose another --out"
            )

    def prepare(
        self, config: TrainConfig, step: int, resume: bool, resumed_from: Path | None
    ) -> None:
        """Config copy, stale temporary files removed, metrics trimmed to the resumed step."""
        if not self.is_main:
            return
        if resume and resumed_from is None:
            warn(f"no checkpoint in {self.path}; starting from step 0")
        elif resumed_from is not None:
            warn(f"resuming from {resumed_from} (step {step})")
        self.path.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
        with atomic_text_file(self.path / "config.yaml") as handle:  # read on resume
            handle.write(text)
        for stale in [*self.path.glob(".*.tmp"), *self.path.glob(f"{CHECKPOINT_DIR}/.*.tmp")]:
            stale.unlink()  # left by a process killed while writing
        metrics_path = self.path / "metrics.jsonl"
        kept = []
        if resumed_from is not None and metrics_path.exists():
            kept = [r for r in read_json_lines(metrics_path) if _step_of(r) <= step]
        write_text_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def save_checkpoint(self, state: TrainState) -> Path:
        """Write the whole training state atomically; keep the newest few checkpoints."""
        folder = self.checkpoints
        path = folder / f"step-{state.step:08d}.safetensors"
        if not self.is_main:
            return path
        folder.mkdir(parents=True, exist_ok=True)
        optimizer = state.optimizer.state_dict()
        tensors = {
            f"module.{name}": value.detach().cpu().contiguous()
            for name, value in state.module.state_dict().items()
        }
        for index, slots in optimizer["state"].items():
            for key, value in slots.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "step": state.step,
            "best_value": state.best_value,
            "best_step": state.best_step,
            "evals_without_improvement": state.evals_without_improvement,
            "optimizer_param_groups": optimizer["param_groups"],
            "scheduler": state.scheduler.state_dict(),
            "history": state.history,
        }
        write_safetensors_atomic(tensors, {"state": json.dumps(meta)}, path)
        for old in sorted(folder.glob("step-*.safetensors"))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        return path

    def load_checkpoint(self, state: TrainState, device: torch.device) -> Path | None:
        """Restore the newest readable checkpoint into `state` (the module's tensors onto
        `device`); skip corrupt ones. Returns the checkpoint's path, None when there is none."""
        for path in sorted(self.checkpoints.glob("step-*.safetensors"), reverse=True):
            try:
                tensors, meta = read_safetensors(path)
                saved = json.loads(meta["state"])
            except (SoftpromptError, KeyError, json.JSONDecodeError):
                warn(f"checkpoint {path} is unreadable; trying an older one")
                continue
            _check_groups(state, saved, path)
            _restore(state, tensors, saved, device)
            return path
        return None

    def write_summary(self, summary: dict) -> None:
        """summary.json: what `softprompt train` prints at the end, kept with the run."""
        if self.is_main:
            write_text_atomic(self.path / SUMMARY_FILE, json.dumps(summary, indent=2))


class RunBusyError(UsageError):
    """The run directory is locked by another process training into it (exit 2: choose another
    --out, as for a folder that already holds a run)."""


def _check_groups(state: TrainState, saved: dict, path: Path) -> None:
    """A checkpoint whose optimizer has other parameter groups than this run (one written
    before an encoder trained at a rate of its own) cannot resume it: say how it can."""
    here, there = len(state.optimizer.param_groups), len(saved["optimizer_param_groups"])
    if here != there:
        raise UsageError(
            f"{path} keeps {there} optimizer parameter group(s) but this run has {here} (an "
            "encoder at its own rate, prompt.encoder_lr_scale, is newer than the checkpoint); "
            "resume with --set prompt.encoder_lr_scale=1 --allow-changes"
        )


def _restore(state: TrainState, tensors: dict, saved: dict, device: torch.device) -> None:
    """Put a checkpoint's tensors and "state" metadata back into `state`."""
    module_state = {
        name.removeprefix("module."): value.to(device)
        for name, value in tensors.items()
        if name.startswith("module.")
    }
    state.module.load_state_dict(module_state)
    optimizer_state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            optimizer_state.setdefault(int(index), {})[key] = value
    settings = _settings_of(state)
    state.optimizer.load_state_dict(
        {"state": optimizer_state, "param_groups": saved["optimizer_param_groups"]}
    )
    state.scheduler.load_state_dict(saved["scheduler"])
    _apply_settings(state, settings)
    torch.set_rng_state(tensors["rng.torch"])
    state.step = saved["step"]
    state.best_value = saved["best_value"]
    state.best_step = saved["best_step"]
    state.evals_without_improvement = saved["evals_without_improvement"]
    state.history = saved["history"]


def _settings_of(state: TrainState) -> tuple[list[dict], list[float]]:
    """The optimizer's hyperparameters (learning rate, weight decay...) and the schedule's
    base rates as this run's config sets them, before a checkpoint overwrites them."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer.param_groups]
    return groups, list(state.scheduler.base_lrs)


def _apply_settings(state: TrainState, settings: tuple[list[dict], list[float]]) -> None:
    """Put the config's hyperparameters back over a checkpoint's: a resume with a changed
    `train.lr`, schedule or weight decay (`--allow-changes`) trains with the change. The
    learning rate is the base rate times the schedule's factor at the resumed step, as the
    schedule computes it, so an unchanged config resumes bitwise."""
    groups, base_lrs = settings
    scheduler = state.scheduler
    for group, fresh, base, factor in zip(
        state.optimizer.param_groups, groups, base_lrs, scheduler.lr_lambdas
    ):
        group.update(fresh)
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler.base_lrs = base_lrs
    scheduler._last_lr = [group["lr"] for group in state.optimizer.param_groups]


def _step_of(record: object) -> int:
    """The step of a metrics.jsonl record; a huge one for a record without a readable one."""
    try:
        return int(record.get("step", 0))
    except (AttributeError, TypeError, ValueError):
        return 1 << 62  # not a record of ours: drop it


class RunLog:
    """The record of a run as it goes: a line per event in metrics.jsonl (written by the main
    process only) and the same numbers to the experiment trackers named in `report_to`."""

    def __init__(self, run_dir: RunDir, report_to: list[str], config: dict) -> None:
        self.trackers = Trackers(report_to, run_dir.path, config, enabled=run_dir.is_main)
        self._path = run_dir.metrics_path

    def __enter__(self) -> RunLog:
        self._metrics = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.trackers.close()
        finally:
            try:
                self.sync()
            finally:
                os.close(self._metrics)

    def train(self, record: dict) -> None:
        """One optimizer step: `record` holds its step, loss and learning rate."""
        append_line(self._metrics, record, Path(self._path))
        self.trackers.log({"train": record}, record["step"])

    def eval(self, step: int, dev: dict) -> None:
        """One evaluation on the dev split at `step`."""
        append_line(self._metrics, {"event": "eval", "step": step, "dev": dev}, Path(self._path))
        self.trackers.log({"dev": dev}, step)

    def flush(self) -> None:
        """Each line is handed to the OS as it is written (one `write` per line), so a reader
        sees each step as it ends; nothing is buffered here."""

    def sync(self) -> None:
        """fsync the lines so far (at the end of the run: they survive a power loss)."""
        with contextlib.suppress(OSError):  # /dev/null in the other processes
            os.fsync(self._metrics)
