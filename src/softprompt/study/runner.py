"""Running a study: every run of the grid that is not done, here one after another or as Ray
tasks (`study.ray`), then the summary of all of them. Both give the same run folders, the same
metrics run for run and the same study.json/study.csv."""

from __future__ import annotations

import os
import time
from pathlib import Path

from softprompt.errors import UsageError
from softprompt.study.grid import (
    LOOPBACK_ONLY,
    RaySettings,
    StudyConfig,
    planned_runs,
    summarise,
)
from softprompt.study.runs import StudyProgress, is_done, train_run


def run_study(
    study: StudyConfig, out_dir: str | Path, progress: bool = True, allow_changes: bool = False
) -> dict:
    """Run every unfinished run of the grid, then summarise all of them. An interrupted run
    (checkpoints, no summary) resumes as `train --resume` does: a config changed since (the
    base config, `set:`) is refused unless `allow_changes`, which records the changes in the
    run. Finished runs are kept as they are. With `study.ray`, the runs are Ray tasks and their
    folders live under its `storage` (default: `out_dir`)."""
    folder = Path(out_dir)
    if study.ray is not None:
        check_ray(study.ray)
    runs = planned_runs(study)
    runs_root = Path(study.ray.storage) if study.ray and study.ray.storage else folder
    for run in runs:
        run["skipped"] = is_done(runs_root / run["name"])
    todo = [run for run in runs if not run["skipped"]]
    if study.ray is not None:
        _ray_runner(study.ray)(study, todo, runs_root, len(runs), allow_changes, progress)
    else:
        _run_here(study, todo, runs_root, len(runs), allow_changes, progress)
    return summarise(study, runs, runs_root, folder)


def check_ray(settings: RaySettings) -> None:
    """Refuse a cluster address without a folder every node sees: the run folders live there."""
    if settings.joins_cluster and not settings.storage:
        raise UsageError(
            f"joining the Ray cluster at {settings.address} needs --storage DIR (ray.storage "
            "in the study file), a folder every node mounts at the same path; see "
            "docs/study-ray.md"
        )


def _ray_runner(settings: RaySettings):
    """`cluster.run_on_ray`, imported only here: Ray is an optional extra."""
    if not settings.joins_cluster:  # read by Ray at import: a runtime on loopback addresses only
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    try:
        from softprompt.study.cluster import run_on_ray
    except ImportError as exc:
        if exc.name != "ray" and not (exc.name or "").startswith("ray."):
            raise
        raise UsageError(
            "running a study on Ray needs Ray, an optional extra: pip install -e '.[ray]' "
            "(or leave out --ray to run the grid here, one run after another)"
        ) from None
    return run_on_ray


def _run_here(
    study: StudyConfig,
    todo: list[dict],
    runs_root: Path,
    total: int,
    allow_changes: bool,
    progress: bool,
) -> None:
    """The runs one after another in this process, each with its own progress bar."""
    with StudyProgress(total, total - len(todo), study.metric, enabled=progress) as shown:
        for run in todo:
            started = time.monotonic()
            summary = train_run(
                study.config, run["overrides"], runs_root / run["name"], allow_changes, progress
            )
            shown.finished(run["name"], summary, time.monotonic() - started)
