"""Commands that train prompts: train, study (a grid of trainings) and demo."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from softprompt.cli.common import JsonOpt, emit, out
from softprompt.cli.usage import click_errors
from softprompt.errors import UsageError


def train(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Argument(help="Training config (YAML); with --resume, leave out for the run's own."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set train.lr=0.1")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory.")] = None,
    lr: Annotated[
        str | None,
        typer.Option(help="Learning rate (train.lr): a number, or auto for a range test first."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this directory from its checkpoint.")
    ] = None,
    allow_changes: Annotated[
        bool,
        typer.Option(help="With --resume: continue with a changed config, recorded in the run."),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a soft prompt; writes prompt.safetensors (best), metrics.jsonl and summary.json.

    The config's method: prompt (prompt tuning), prefix (key/value prefixes), p_tuning (the
    prompt as an MLP's or LSTM's output while it trains), residual (rows through a residual
    bottleneck MLP while it trains) — these two save a plain prompt — or cartridge (raw
    keys/values started from a document's own, trained by self-study). The run directory is
    locked while training; --resume continues a run with its own config."""
    from softprompt.config import load_config
    from softprompt.training.resume import require_run
    from softprompt.training.trainer import train as run_training

    _check_train_options(ctx, config, out_dir, resume, allow_changes)
    source = config if config is not None else require_run(resume)
    cfg = load_config(source, [*(set_ or []), *([f"train.lr={lr}"] if lr else [])])
    run_dir = resume or out_dir or Path("runs") / f"{config.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    summary = run_training(
        cfg,
        run_dir,
        resume=resume is not None,
        allow_changes=allow_changes,
        progress=not quiet,
    )

    def render(s: dict) -> None:
        best = s["best_dev"] or {}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in best.items())
        out.print(f"best dev ({s['best_metric']}) at step {s['best_step']}: {shown}")
        out.print(f"{s['train_samples_per_second']:.1f} samples/s; prompt: {s['prompt_path']}")

    emit(summary, as_json, render)


def _check_train_options(
    ctx: typer.Context,
    config: Path | None,
    out_dir: Path | None,
    resume: Path | None,
    allow_changes: bool,
) -> None:
    """Usage errors of `train` before anything loads: CONFIG is needed unless --resume names
    the run (whose config.yaml is then the config); --allow-changes only goes with --resume."""
    if config is None and resume is None:
        param = next(p for p in ctx.command.params if p.name == "config")
        raise click_errors.MissingParameter(ctx=ctx, param=param)
    if resume is not None and out_dir is not None and resume != out_dir:
        raise UsageError("give either --out or --resume (the run directory to continue), not both")
    if allow_changes and resume is None:
        raise UsageError("--allow-changes goes with --resume DIR (the run whose config changes)")


AddressArg = Annotated[
    str | None,
    typer.Argument(
        help="With --ray: the Ray cluster to join (host:6379, or ray://host:10001); left out, "
        "a Ray runtime on this machine (127.0.0.1).",
        show_default=False,
    ),
]
RayOpt = Annotated[bool, typer.Option("--ray", help="Run each run of the grid as a Ray task.")]
CpusPerRunOpt = Annotated[
    float | None, typer.Option(help="With --ray: CPUs each run gets (default 1).")
]
GpusPerRunOpt = Annotated[
    float | None, typer.Option(help="With --ray: GPUs each run gets (default 0).")
]
StorageOpt = Annotated[
    Path | None,
    typer.Option(
        help="With --ray: where the run folders live, a folder every node sees at the same path "
        "(needed to join a cluster; default: the study directory)."
    ),
]


def study(
    study_file: Annotated[Path, typer.Argument(help="Study YAML (base config and the grid).")],
    address: AddressArg = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Study directory.")] = Path("runs/study"),
    ray: RayOpt = False,
    cpus_per_run: CpusPerRunOpt = None,
    gpus_per_run: GpusPerRunOpt = None,
    storage: StorageOpt = None,
    allow_changes: Annotated[
        bool,
        typer.Option(
            help="Resume interrupted runs with a changed config, recorded in each run "
            "(finished runs are kept)."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a grid of trainings (model sets x seeds), here one after another or on Ray (--ray);
    finished runs are skipped on re-run and interrupted ones resume from their checkpoint."""
    from softprompt.study import load_study, run_study

    study_config = load_study(study_file)
    ray_options = {
        "address": address,
        "cpus_per_run": cpus_per_run,
        "gpus_per_run": gpus_per_run,
        "storage": str(storage) if storage else None,
    }
    study_config = with_ray_options(study_config, ray, ray_options)
    result = run_study(study_config, out_dir, progress=not quiet, allow_changes=allow_changes)

    def render(r: dict) -> None:
        table = Table("group", "models", "runs", "mean", "std", title=f"{r['metric']}")
        for g in r["groups"]:
            models_shown = ", ".join(Path(m).name for m in g["models"])
            table.add_row(
                g["group"], models_shown, str(g["runs"]), f"{g['mean']:.4f}", f"{g['std']:.4f}"
            )
        out.print(table)
        out.print(f"std: {r['std']}; written to {out_dir}/study.csv")

    emit(result, as_json, render)


def with_ray_options(study_config, ray: bool, options: dict):
    """The study with the command line's Ray options over its file's `ray:` section; the
    options without --ray (or a `ray:` section) are a usage error."""
    from pydantic import ValidationError

    from softprompt.config import describe_error
    from softprompt.study import RaySettings

    given = {key: value for key, value in options.items() if value is not None}
    if not ray and study_config.ray is None:
        if given:
            flags = ", ".join(
                "ADDRESS" if key == "address" else "--" + key.replace("_", "-") for key in given
            )
            verb = "goes" if len(given) == 1 else "go"
            raise UsageError(f"{flags} {verb} with --ray: add --ray, or leave it out")
        return study_config
    base = study_config.ray.model_dump() if study_config.ray else {}
    try:
        settings = RaySettings(**{**base, **given})
    except ValidationError as exc:
        message = describe_error(exc, RaySettings)
        for key in given:
            message = message.replace(f"{key}:", f"--{key.replace('_', '-')}:")
        raise UsageError(f"study --ray: {message}") from None
    return study_config.model_copy(update={"ray": settings})


def demo(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Run directory.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a 16-token prompt on the bundled SmolLM2 (sample sentiment); zero-shot vs trained."""
    from softprompt.demo import run_demo

    result = run_demo(out_dir, set_ or [], progress=not quiet)

    def render(r: dict) -> None:
        out.print(f"model: {r['model']}  test examples: {r['test_examples']}")
        out.print(f"zero-shot accuracy: {r['zero_shot_accuracy']:.3f}")
        out.print(f"trained accuracy:   {r['trained_accuracy']:.3f}")
        out.print(f"run written to {r['run_dir']} ({r['seconds']:.0f} s)")

    emit(result, as_json, render)
