"""Studies: the paper's grid of runs — model sets x training seeds x init seeds — one run
directory each, and a table of mean ± std per model set. Finished runs are skipped on re-run.

Each run's score is the mean over its models of the best prompt's dev metric (a per-prompt
mean); a group's std is the population std (ddof=0) of those per-prompt means, as in the paper.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from softprompt.config import describe_error, load_config
from softprompt.errors import ConfigError
from softprompt.training.trainer import train


class StudyConfig(BaseModel):
    """A grid of training runs over one base config."""

    model_config = ConfigDict(extra="forbid")

    config: str
    set: list[str] = Field(default_factory=list)
    model_sets: list[list[str]] = Field(min_length=1)
    train_seeds: list[int] = Field(default_factory=lambda: [42], min_length=1)
    init_seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    metric: str = "accuracy"


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


def run_study(
    study: StudyConfig, out_dir: str | Path, progress: bool = True, allow_changes: bool = False
) -> dict:
    """Run every unfinished run of the grid, then summarise all of them. An interrupted run
    (checkpoints, no summary) resumes as `train --resume` does: a config changed since (the
    base config, `set:`) is refused unless `allow_changes`, which records the changes in the
    run. Finished runs are kept as they are."""
    folder = Path(out_dir)
    runs = planned_runs(study)
    for run in runs:
        run_dir = folder / run["name"]
        if (run_dir / "summary.json").is_file():
            run["skipped"] = True
            continue
        config = load_config(study.config, run["overrides"])
        resume = (run_dir / "checkpoints").is_dir()
        train(config, run_dir, resume=resume, allow_changes=allow_changes, progress=progress)
        run["skipped"] = False
    return summarise(study, runs, folder)


def summarise(study: StudyConfig, runs: list[dict], folder: Path) -> dict:
    """Per-run scores and per-group mean ± population std; written as study.json/.csv."""
    rows = []
    for run in runs:
        summary = json.loads((folder / run["name"] / "summary.json").read_text())
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
    (folder / "study.json").write_text(json.dumps(result, indent=2))
    with (folder / "study.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "models", "runs", "mean", "std"])
        for g in groups:
            writer.writerow([g["group"], " ".join(g["models"]), g["runs"], g["mean"], g["std"]])
    return result
