"""Commands that use a trained prompt (or none): evaluate, predict and generate."""

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


def evaluate(
    prompt: Annotated[
        Path | None, typer.Argument(help="Prompt .safetensors; leave out for zero-shot.")
    ] = None,
    model: ModelsOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "test",
    config: ConfigOpt = None,
    template: TemplateOpt = None,
    verbalizer: VerbalizerOpt = None,
    batch_size: BatchOpt = 32,
    dtype: DtypeOpt = "float32",
    task: Annotated[
        str | None, typer.Option(help="Override the task type, e.g. suffix (the smiley metric).")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Suffix task: continuations sampled.")] = 40,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Loss, accuracy and macro-F1 of a prompt (or the bare model) on a data split.

    With several --model, one result per model (JSON: a list), each marked trained_on_model."""
    from softprompt.evaluation import evaluate as run_evaluation
    from softprompt.models.backbone import load_backbone, resolve_device

    names = model or [default_model(prompt, None)]
    place = resolve_device(device, "--device")
    results = [
        run_evaluation(
            prompt,
            load_backbone(name, dtype=dtype, device=place),
            data,
            split=split,
            config=config,
            template=template,
            verbalizer=parse_verbalizer(verbalizer),
            batch_size=batch_size,
            task=task,
            samples=samples,
        )
        for name in names
    ]
    emit(results[0] if len(results) == 1 else results, as_json, lambda _: _render_scores(results))


def _render_scores(rows: list[dict]) -> None:
    """One line per model for the suffix task, else a table of the metrics by model."""
    if "suffix_rate" in rows[0]:
        for r in rows:
            rate, ppl = r["suffix_rate"], r["perplexity"]
            out.print(
                f"{r['model']}: suffix rate {rate['with_prefix']:.3f} with, "
                f"{rate['without_prefix']:.3f} without ({r['samples']} samples); perplexity "
                f"{ppl['with_prefix']:.2f} with, {ppl['without_prefix']:.2f} without"
            )
        return
    keys = [k for k in ("loss", "accuracy", "macro_f1", "perplexity") if k in rows[0]]
    title = f"{rows[0]['prompt'] or 'zero-shot'} ({rows[0]['split']})"
    table = Table("model", "trained on", *keys, "examples", title=title)
    for r in rows:
        count = r.get("examples", r.get("tokens"))
        cells = [f"{r[k]:.4f}" for k in keys]
        table.add_row(r["model"], "yes" if r["trained_on_model"] else "no", *cells, str(count))
    out.print(table)


def predict(
    prompt: Annotated[Path | None, typer.Argument(help="Prompt .safetensors (or none).")] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="Text to classify.")
    ] = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    template: TemplateOpt = None,
    verbalizer: VerbalizerOpt = None,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """The label and the probability of each label for one or more texts."""
    from softprompt.evaluation import predict as run_prediction
    from softprompt.models.backbone import load_backbone, resolve_device

    if not text:
        raise UsageError("give at least one --text to classify")
    place = resolve_device(device, "--device")
    results = run_prediction(
        prompt,
        text,
        load_backbone(default_model(prompt, model), dtype=dtype, device=place),
        config=config,
        template=template,
        verbalizer=parse_verbalizer(verbalizer),
        dtype=dtype,
    )

    def render(rows: list[dict]) -> None:
        for row in rows:
            probs = "  ".join(f"{k} {v:.3f}" for k, v in row["probabilities"].items())
            out.print(f"[bold]{row['label']}[/]  ({probs})  {row['text']}")

    emit(results, as_json, render)


def generate(
    prompt: Annotated[Path | None, typer.Argument(help="Prompt .safetensors (or none).")] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="Text to continue.")
    ] = None,
    model: ModelOpt = None,
    greedy: Annotated[bool, typer.Option(help="Greedy decoding instead of sampling.")] = False,
    temperature: float = 1.0,
    top_k: Annotated[int | None, typer.Option()] = None,
    top_p: Annotated[float | None, typer.Option()] = None,
    max_new_tokens: int = 40,
    seed: int = 0,
    compare: Annotated[bool, typer.Option(help="Also generate without the prompt.")] = False,
    num_samples: Annotated[
        int, typer.Option(min=1, help="Samples per text (sampling draws each separately).")
    ] = 1,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Continue texts as given (no template) with a prompt or prefix; --compare shows the bare
    model too."""
    from softprompt.evaluation import steering
    from softprompt.generation import SamplingOptions, generate_samples
    from softprompt.methods import load_artifact
    from softprompt.models.backbone import load_backbone, resolve_device

    if not text:
        raise UsageError("give at least one --text to continue")
    if compare and prompt is None:
        raise UsageError("--compare needs a PROMPT to compare against the bare model")
    options = SamplingOptions(max_new_tokens, greedy, temperature, top_k, top_p, seed)
    options.check()
    place = resolve_device(device, "--device")
    backbone = load_backbone(default_model(prompt, model), dtype=dtype, device=place)
    soft = load_artifact(prompt) if prompt is not None else None
    steer = steering(soft, backbone, str(prompt)) if soft is not None else None
    rows = generate_samples(
        backbone, text, steer, options, num_samples=num_samples, compare=compare
    )
    emit(rows, as_json, lambda items: _render_generations(items, compare))


def _render_generations(items: list[dict], compare: bool) -> None:
    """A with/without table for --compare, else each text followed by its continuation."""
    if compare:
        table = Table("text", "with prompt", "without prompt", show_lines=True)
        for item in items:
            table.add_row(item["text"], item["with_prompt"], item["without_prompt"])
        out.print(table)
        return
    for item in items:
        out.print(f"[bold]{item['text']}[/]{next(v for k, v in item.items() if k != 'text')}")
