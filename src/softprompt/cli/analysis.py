"""Commands that look inside prompts: explain, compress and compare."""

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
    ModelOpt,
    ModelsOpt,
    SplitOpt,
    TemplateOpt,
    VerbalizerOpt,
    default_model,
    emit,
    out,
    parse_verbalizer,
)
from softprompt.errors import UsageError


def explain(
    prompt: Annotated[Path, typer.Argument(help="Prompt .safetensors to explain.")],
    model: ModelsOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "test",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Report directory.")] = None,
    importance: Annotated[str, typer.Option(help="exact (ablation) or gradient.")] = "exact",
    ablation: Annotated[str, typer.Option(help="zero, mean or remove.")] = "zero",
    top_k: Annotated[int, typer.Option(min=1, help="Nearest tokens per prompt token.")] = 5,
    knn: Annotated[int, typer.Option(min=1, help="Neighbours in the location vote.")] = 7,
    keep: Annotated[
        int | None, typer.Option(min=1, help="One model: tokens kept when compressing.")
    ] = None,
    max_examples: Annotated[int | None, typer.Option(min=1)] = None,
    projection: Annotated[str, typer.Option(help="tsne, umap, pca or none.")] = "tsne",
    config: ConfigOpt = None,
    template: TemplateOpt = None,
    verbalizer: VerbalizerOpt = None,
    batch_size: BatchOpt = 32,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Which tokens matter to which model, where they lie, and how far the prompt compresses."""
    from softprompt.analysis.explain import explain as run_explain
    from softprompt.analysis.explain_report import check_projection, write_explain_report
    from softprompt.models.backbone import load_backbone, resolve_device

    check_projection(projection)
    names = model or [default_model(prompt, None)]
    place = resolve_device(device, "--device")
    backbones = [load_backbone(name, dtype=dtype, device=place) for name in names]
    result = run_explain(
        prompt,
        backbones,
        data,
        split=split,
        config=config,
        template=template,
        verbalizer=parse_verbalizer(verbalizer),
        importance=importance,
        ablation=ablation,
        top_k=top_k,
        knn=knn,
        keep=keep,
        max_examples=max_examples,
        batch_size=batch_size,
    )
    result["files"] = write_explain_report(
        result, prompt, backbones, out_dir, projection=projection
    )
    emit(result, as_json, lambda r: _render_explanation(r, names))


def _render_explanation(r: dict, names: list[str]) -> None:
    """The token table (owner, importance, location, nearest token in each model)."""
    table = Table("token", "owner", "importance", "location", *[Path(n).name for n in names])
    for t in r["tokens"]:
        table.add_row(
            str(t["index"]),
            Path(t["owner"]).name,
            f"{t['strength']:.4f}",
            Path(t["location_cosine"]).name,
            *t["nearest"],
        )
    out.print(table)
    if len(names) > 1:
        out.print(f"alignment (cosine) {r['alignment']['cosine']:.2f}, chance {r['chance']:.2f}")
    out.print(f"report: {r['files']['html']}")


def compress(
    prompt: Annotated[Path, typer.Argument(help="Prompt .safetensors to shorten.")],
    keep: Annotated[str, typer.Option(help="A number of tokens, or 'owned'.")],
    out_path: Annotated[Path, typer.Option("--out", help="New .safetensors file.")],
    model: ModelOpt = None,
    data: DataOpt = None,
    split: Annotated[str, typer.Option(help="Split that ranks tokens and is reported.")] = "test",
    mode: Annotated[str, typer.Option(help="remove (shorter) or mask (zeroed).")] = "remove",
    ablation: Annotated[str, typer.Option(help="zero, mean or remove.")] = "zero",
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Keep the N most important tokens (or those MODEL owns among the prompt's models)."""
    from softprompt.analysis.compress_command import compress_prompt
    from softprompt.models.backbone import resolve_device

    result = compress_prompt(
        prompt,
        default_model(prompt, model),
        keep,
        out_path,
        data=data,
        split=split,
        mode=mode,
        ablation=ablation,
        batch_size=batch_size,
        device=resolve_device(device, "--device"),
    )

    def render(r: dict) -> None:
        out.print(f"tokens {r['tokens_before']} -> {r['tokens_after']} (kept {r['kept']})")
        out.print(f"accuracy {r['before']['accuracy']:.3f} -> {r['after']['accuracy']:.3f}")
        out.print(f"wrote {r['path']}")

    emit(result, as_json, render)


def compare(
    prompts: Annotated[list[Path], typer.Argument(help="Two or more prompt files.")],
    as_json: JsonOpt = False,
) -> None:
    """The six similarity metrics between prompts, as matrices."""
    from softprompt.analysis.similarity import METRICS, similarity_matrices
    from softprompt.methods.prompt import load_prompt

    if len(prompts) < 2:
        raise UsageError("compare needs at least two prompts")
    matrices = similarity_matrices([load_prompt(p).embedding for p in prompts])
    result = {"prompts": [str(p) for p in prompts], "metrics": matrices}

    def render(r: dict) -> None:
        labels = [Path(p).stem for p in r["prompts"]]
        for metric in METRICS:
            table = Table("", *labels, title=metric)
            for label, row in zip(labels, r["metrics"][metric]):
                table.add_row(label, *["n/a" if v is None else f"{v:.4f}" for v in row])
            out.print(table)

    emit(result, as_json, render)
