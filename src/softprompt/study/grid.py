"""A study's grid: its config, the runs it plans (model sets x training seeds x init seeds),
and the table of mean ± std per model set over their summaries.

Each run's score is the mean over its models of the best prompt's dev metric (a per-prompt
mean); a group's std is the population std (ddof=0) of those per-prompt means, as in the paper.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from softprompt.config import describe_error
from softprompt.errors import ConfigError
from softprompt.files import atomic_text_file, write_text_atomic
from softprompt.training.run_dir import read_summary

LOCAL = "local"  # the address of a Ray runtime started here, on 127.0.0.1
# Ray's switch for a runtime that never leaves this machine (its name is Ray's: off by default
# on Windows and macOS); "0" makes Ray bind and advertise 127.0.0.1 instead of the node's IP.
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RaySettings(BaseModel):
    """Where and with what each run of a grid runs on Ray (`ray:` in a study file)."""

    model_config = ConfigDict(extra="forbid")

    address: str = LOCAL
    cpus_per_run: float = Field(1.0, gt=0)
    gpus_per_run: float = Field(0.0, ge=0)
    storage: str | None = None
    max_retries: int = Field(3, ge=0)

    @property
    def joins_cluster(self) -> bool:
        return self.address != LOCAL


class StudyConfig(BaseModel):
    """A grid of training runs over one base config."""

    model_config = ConfigDict(extra="forbid")

    config: str
    set: list[str] = Field(default_factory=list)
    model_sets: list[list[str]] = Field(min_length=1)
    train_seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)
    init_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    metric: str = "accuracy"
    ray: RaySettings | None = None

    @field_validator("ray", mode="before")
    @classmethod
    def _ray_switch(cls, value):
        """`ray: true` is a local runtime with the defaults; `ray: false`, no Ray."""
        if value is True:
            return {}
        return None if value is False else value


def load_study(path: str | Path) -> StudyConfig:
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"study file not found: {source}")
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        study = StudyConfig.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"study {source}: not valid YAML") from exc
    except ValidationError as exc:
        raise ConfigError(f"study {source}: {describe_error(exc, StudyConfig)}") from exc
    base = Path(study.config)
    if not base.is_absolute() and not base.is_file() and (source.parent / base).is_file():
        study.config = str(source.parent / base)
    return study


def planned_runs(study: StudyConfig) -> list[dict]:
    """Every run of the grid with its overrides and run-directory name."""
    runs = []
    for index, models in enumerate(study.model_sets):
        group = f"set{index}-{len(models)}models"
        for train_seed in study.train_seeds:
            for init_seed in study.init_seeds:
                runs.append(
                    {
                        "group": group,
                        "models": models,
                        "train_seed": train_seed,
                        "init_seed": init_seed,
                        "name": f"{group}/train{train_seed}-init{init_seed}",
                        "overrides": [
                            *study.set,
                            f"models={json.dumps(models)}",
                            f"train.seed={train_seed}",
                            f"prompt.seed={init_seed}",
                        ],
                    }
                )
    return runs


def summarise(study: StudyConfig, runs: list[dict], runs_root: Path, folder: Path) -> dict:
    """Per-run scores and per-group mean ± population std of the run folders under
    `runs_root`; written as study.json/.csv into `folder`."""
    rows = []
    for run in runs:
        summary = read_summary(runs_root / run["name"]) or {}
        best = summary.get("best_dev") or {}
        rows.append(
            {
                "run": run["name"],
                "group": run["group"],
                "models": run["models"],
                "train_seed": run["train_seed"],
                "init_seed": run["init_seed"],
                "score": best.get(study.metric),
                "skipped": run.get("skipped", False),
            }
        )
    groups = []
    for group in dict.fromkeys(r["group"] for r in rows):
        scores = [r["score"] for r in rows if r["group"] == group and r["score"] is not None]
        groups.append(
            {
                "group": group,
                "models": next(r["models"] for r in rows if r["group"] == group),
                "runs": len(scores),
                "mean": statistics.fmean(scores) if scores else None,
                "std": statistics.pstdev(scores) if scores else None,
            }
        )
    result = {"metric": f"dev {study.metric}", "std": "population (ddof=0)", "runs": rows}
    result["groups"] = groups
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "study.json", json.dumps(result, indent=2))
    with atomic_text_file(folder / "study.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "models", "runs", "mean", "std"])
        for g in groups:
            writer.writerow([g["group"], " ".join(g["models"]), g["runs"], g["mean"], g["std"]])
    return result
