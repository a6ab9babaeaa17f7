"""Commands across models: transfer-matrix (every prompt on every model), transfer (map a
prompt into another model's space) and align (the embedding map between two models)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from softprompt.cli.common import (
    BatchOpt,
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelsOpt,
    SplitOpt,
    TemplateOpt,
    VerbalizerOpt,
    display_name,
    emit,
    out,
    parse_verbalizer,
)
from softprompt.errors import UsageError

MethodOpt = Annotated[str, typer.Option(help="Embedding map: ridge or procrustes.")]


def transfer_matrix(
    prompt: Annotated[list[Path], typer.Argument(help="One or more prompt .safetensors files.")],
    model: ModelsOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "test",
    config: ConfigOpt = None,
    template: TemplateOpt = None,
    verbalizer: VerbalizerOpt = None,
    metric: Annotated[str, typer.Option(help="Metric shown in the printed table.")] = "accuracy",
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write transfer.json and transfer.csv here.")
    ] = None,
    no_baselines: Annotated[
        bool, typer.Option("--no-baselines", help="Skip zero-shot and initial-prompt rows.")
    ] = False,
    batch_size: BatchOpt = 32,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Every prompt on every model, with zero-shot and untrained-prompt baselines."""
    from softprompt.crossmodel.matrix import transfer_matrix as build_matrix
    from softprompt.crossmodel.matrix import write_matrix
    from softprompt.models import resolve_device

    if not model:
        raise UsageError("give the models to evaluate on with --model (repeat it)")
    matrix = build_matrix(
        [str(p) for p in prompt],
        model,
        data,
        split=split,
        config=config,
        template=template,
        verbalizer=parse_verbalizer(verbalizer),
        batch_size=batch_size,
        dtype=dtype,
        baselines=not no_baselines,
        device=resolve_device(device, "--device"),
    )
    if out_dir is not None:
        write_matrix(matrix, out_dir)

    def render(m: dict) -> None:
        table = Table("prompt", *[Path(x).name for x in m["models"]], title=f"{metric} ({split})")
        for row in m["rows"]:
            cells = []
            for name, cell in row["results"].items():
                mark = "*" if name in row["trained_on"] else ""
                cells.append(f"{cell[metric]:.3f}{mark}" if metric in cell else "n/a")
            table.add_row(display_name(row["name"]), *cells)
        out.print(table)
        out.print("* trained on this model")

    emit(matrix, as_json, render)


def transfer(
    prompt: Annotated[Path, typer.Argument(help="Prompt .safetensors made for another model.")],
    to: Annotated[str | None, typer.Option("--to", help="Model to move the prompt to.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="New .safetensors file.")] = None,
    method: MethodOpt = "procrustes",
    source: Annotated[
        str | None, typer.Option("--from", help="Source model (default: the prompt's first).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Also evaluate on the target with this config's task."),
    ] = None,
    split: SplitOpt = "test",
    refit: Annotated[bool, typer.Option(help="Fit the map anew, not from the cache.")] = False,
    batch_size: BatchOpt = 32,
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Map a prompt into another model's embedding space through their shared tokens."""
    from softprompt.crossmodel.transfer import run_transfer

    if to is None:
        raise UsageError("give the target model with --to MODEL")
    if out_path is None:
        raise UsageError("give the new file with --out NEW.safetensors")
    result = run_transfer(
        prompt,
        to,
        out_path,
        method=method,
        source=source,
        config=config,
        split=split,
        batch_size=batch_size,
        dtype=dtype,
        refit=refit,
    )

    def render(r: dict) -> None:
        _print_alignment(r["alignment"])
        out.print(f"wrote {r['path']}")
        rows = r.get("evaluation") or []
        if rows:
            table = Table("prompt", "model", "accuracy", "loss", title=f"{config} ({split})")
            for row in rows:
                accuracy = f"{row['accuracy']:.3f}" if "accuracy" in row else "n/a"
                table.add_row(row["row"], row["model"], accuracy, f"{row['loss']:.4f}")
            out.print(table)

    emit(result, as_json, render)


def align(
    model_a: Annotated[str, typer.Argument(help="First model spec.")],
    model_b: Annotated[str, typer.Argument(help="Second model spec.")],
    method: MethodOpt = "procrustes",
    dtype: DtypeOpt = "float32",
    as_json: JsonOpt = False,
) -> None:
    """Fit (or read from the cache) the embedding map both ways and print its quality."""
    from softprompt.crossmodel.transfer import align_both

    result = align_both(model_a, model_b, method, dtype=dtype)

    def render(r: dict) -> None:
        for direction in r["directions"]:
            _print_alignment({**direction, "method": r["method"]})

    emit(result, as_json, render)


def _print_alignment(a: dict) -> None:
    """One line: the map's direction and method, and its held-out quality."""
    q = a.get("quality", a)
    scores = "n/a (nothing held out)"
    if q["top1"] is not None:
        scores = f"top-1 {q['top1']:.3f}, top-10 {q['top10']:.3f}, cosine {q['mean_cosine']:.3f}"
    out.print(
        f"{a['source']} -> {a['target']} ({a['method']}): {scores} on {q['heldout_pairs']} "
        f"held-out of {q['shared_tokens']} shared tokens"
    )
