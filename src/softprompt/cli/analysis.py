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
    prompt: Annotated[
        Path, typer.Argument(help="Prompt .safetensors (or research-code .pt) to explain.")
    ],
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
    from softprompt.models import load_backbone, resolve_device

    check_projection(projection)
    names = _model_names(prompt, model)
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


def _model_names(prompt: Path, model: list[str] | None) -> list[str]:
    """The models to explain on: those given, else the first the prompt's header records (a
    research-code .pt records none, so it needs --model; it is read here, so that a bad file
    fails before any model loads)."""
    from softprompt.interop.esp import is_esp_file, read_esp_tensor

    if is_esp_file(prompt):
        read_esp_tensor(prompt)
        if not model:
            raise UsageError(
                f"{prompt} is a research-code prompt and records no model; name the model(s) it "
                "was trained on with --model"
            )
    return model or [default_model(prompt, None)]


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
    from softprompt.models import resolve_device

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
    prompts: Annotated[
        list[Path],
        typer.Argument(help="Two or more prompt .safetensors or research-code .pt files."),
    ],
    as_json: JsonOpt = False,
) -> None:
    """The six similarity metrics between prompts, as matrices (no model needed)."""
    from softprompt.analysis.similarity import METRICS, similarity_matrices
    from softprompt.artifacts import open_prompt

    if len(prompts) < 2:
        raise UsageError("compare needs at least two prompts")
    embeddings = [open_prompt(p).embedding for p in prompts]
    widths = {str(p): int(e.shape[1]) for p, e in zip(prompts, embeddings)}
    if len(set(widths.values())) > 1:
        listed = ", ".join(f"{p} {d}" for p, d in widths.items())
        raise UsageError(
            f"prompts of different hidden sizes cannot be compared ({listed}); compare prompts "
            "of one hidden size, or map one into the other's model with softprompt transfer"
        )
    matrices = similarity_matrices(embeddings)
    result = {
        "prompts": [str(p) for p in prompts],
        "labels": distinct_labels(prompts),
        "metrics": matrices,
    }

    def render(r: dict) -> None:
        for metric in METRICS:
            table = Table("", *r["labels"], title=metric)
            for label, row in zip(r["labels"], r["metrics"][metric]):
                table.add_row(label, *["n/a" if v is None else f"{v:.4f}" for v in row])
            out.print(table)

    emit(result, as_json, render)


def distinct_labels(paths: list[Path]) -> list[str]:
    """A short label per file: the shortest tail of its path (the file's stem and as few folders
    as needed) that no other file's tail of that length shares, so that two `prompt.safetensors`
    of different runs read `a/prompt` and `b/prompt` (the stem alone told them apart only when
    the names differed). Files equal but for the suffix keep it; a file given twice is one."""
    stemmed = [(*p.parts[:-1], p.stem) for p in paths]
    files_per_stem = {s: {q for q, t in zip(paths, stemmed) if t == s} for s in stemmed}
    tails = [p.parts if len(files_per_stem[s]) > 1 else s for p, s in zip(paths, stemmed)]
    labels = []
    for path, parts in zip(paths, tails):
        others = [t for q, t in zip(paths, tails) if q != path]
        depth = 1
        while depth < len(parts) and any(t[-depth:] == parts[-depth:] for t in others):
            depth += 1
        labels.append(str(Path(*parts[-depth:])))
    return labels
