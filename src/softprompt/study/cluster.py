"""A study's runs as Ray tasks: a local Ray runtime on 127.0.0.1, or a cluster joined by address.

Plain Ray tasks rather than Ray Tune: a run already is a resumable unit (its folder, its
checkpoints, its summary), so all a grid needs from Ray is placement with resources and a retry
when a worker dies; the retried task finds the run's checkpoints and resumes from the newest.
Tune would bring a second checkpoint and results layout beside the run folders. This is the
only module that imports Ray (an optional extra).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import ray
import ray.exceptions
import torch

from softprompt.errors import SoftpromptError, UsageError
from softprompt.study.grid import LOOPBACK_ONLY, RaySettings, StudyConfig
from softprompt.study.runs import StudyProgress, train_run
from softprompt.training.console import DeferredSignals, Interrupted

LOOPBACK = "127.0.0.1"
WAIT_SECONDS = 0.5  # how often the driver looks at the signal flag while runs go on


def run_on_ray(
    study: StudyConfig,
    todo: list[dict],
    runs_root: Path,
    total: int,
    allow_changes: bool,
    progress: bool,
) -> None:
    """Run `todo` as Ray tasks, each with the study's resources, and wait for all of them."""
    settings = study.ray
    started_here = _connect(settings)
    try:
        pending = {_submit(study, run, runs_root, allow_changes): run for run in todo}
        done = total - len(todo)
        with (
            DeferredSignals() as signals,
            StudyProgress(total, done, study.metric, enabled=progress, bar=True) as shown,
        ):
            _gather(pending, signals, shown, settings)
    finally:
        if started_here:
            ray.shutdown()


def _connect(settings: RaySettings) -> bool:
    """Start a local runtime on 127.0.0.1, or join the cluster; True when this call started
    Ray here (so it shuts it down after). A runtime already up in this process is used as is."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports over the network
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if not settings.joins_cluster:
        ray.init(address="local", **quiet)
        if ray.util.get_node_ip_address() != LOOPBACK:
            ray.shutdown()
            raise UsageError(
                "Ray was imported before softprompt could keep its local runtime on 127.0.0.1; "
                f"set {LOOPBACK_ONLY}=0 before importing ray, or start Ray yourself first"
            )
        return True
    try:
        ray.init(address=settings.address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UsageError(
            f"cannot join the Ray cluster at {settings.address}: {reason}; start its head with "
            "`ray start --head` and give its address (host:6379), or leave the address out "
            "for a runtime on this machine"
        ) from None
    return True


def _train_cell(
    config_path: str, overrides: list[str], run_dir: str, allow_changes: bool, threads: int
) -> tuple[dict, float]:
    """One run on a Ray worker, with as many torch threads as the CPUs it was given."""
    torch.set_num_threads(threads)
    started = time.monotonic()
    summary = train_run(config_path, overrides, Path(run_dir), allow_changes, progress=False)
    return summary, time.monotonic() - started


def _submit(study: StudyConfig, run: dict, runs_root: Path, allow_changes: bool):
    settings = study.ray
    task = ray.remote(_train_cell).options(
        name=f"softprompt-study:{run['name']}",
        num_cpus=settings.cpus_per_run,
        num_gpus=settings.gpus_per_run,
        max_retries=settings.max_retries,  # a dead worker, not an error raised by the run
        retry_exceptions=False,
    )
    threads = max(1, int(settings.cpus_per_run))
    run_dir = str(runs_root / run["name"])
    return task.remote(study.config, run["overrides"], run_dir, allow_changes, threads)


def _gather(
    pending: dict, signals: DeferredSignals, shown: StudyProgress, settings: RaySettings
) -> None:
    """Wait for every task, printing each run as it ends; a signal cancels the rest."""
    while pending:
        if signals.received:
            _cancel(pending)
            raise Interrupted(
                f"{signals.received} received: stopped the study with {shown.done} of "
                f"{shown.total} runs done (stopped runs keep their checkpoints); run the same "
                "command again to run only the unfinished ones"
            )
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
        for ref in ready:
            run = pending.pop(ref)
            try:
                summary, seconds = _result(ref, run["name"], settings)
            except BaseException:
                _cancel(pending)
                raise
            shown.finished(run["name"], summary, seconds)


def _result(ref, name: str, settings: RaySettings) -> tuple[dict, float]:
    """The task's result; a user error raised in the run as that error, a lost run as one."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, SoftpromptError):
            raise exc.cause from None
        raise
    except ray.exceptions.RayError as exc:
        kind = type(exc).__name__
        raise SoftpromptError(
            f"run {name} did not finish on Ray ({kind}, after {settings.max_retries} retries); "
            "it keeps its checkpoints: run the study again to resume it"
        ) from None


def _cancel(pending: dict) -> None:
    for ref in pending:
        ray.cancel(ref, force=True)
