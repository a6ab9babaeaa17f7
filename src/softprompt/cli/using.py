"""Commands that use a trained prompt (or none): evaluate, predict and generate."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from softprompt.cli.common import (
    BatchOpt,
    ConfigOpt,
    DataOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    FormatOpt,
    InputOpt,
    JsonOpt,
    MaxMemoryOpt,
    ModelOpt,
    ModelsOpt,
    OutputOpt,
    SplitOpt,
    TemplateOpt,
    TextFieldOpt,
    VerbalizerOpt,
    emit,
    err,
    out,
    parse_verbalizer,
    placed_model,
    progress_reporter,
    quiet_closed_pipe,
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
    questions: Annotated[
        Path | None, typer.Option(help="Multiple-choice questions (JSONL) instead of --data.")
    ] = None,
    document: Annotated[
        Path | None, typer.Option(help="With --questions: also score with this in context.")
    ] = None,
    device: DeviceOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Loss, accuracy and macro-F1 of a prompt (or the bare model) on a data split; with
    --questions, question accuracy and answer log-likelihood (beside --document in context).

    With several --model, one result per model (JSON: a list), each marked trained_on_model.
    PROMPT may compose prefixes or cartridges: a.safetensors+b.safetensors."""
    from softprompt.models import resolve_device
    from softprompt.session import Session

    place = resolve_device(device, "--device")
    overrides = {"config": config, "template": template, "verbalizer": parse_verbalizer(verbalizer)}
    placing = (place, dtype, device_map, max_memory)
    models = [placed_model(prompt, name, *placing) for name in model or [None]]
    first = Session(prompt, models[0], dtype=dtype, device=place, **overrides)
    if questions is not None:
        rows = first.answer_questions(questions, document, batch_size=batch_size)
        emit(rows, as_json, _render_questions)
        return
    sessions = [first, *(first.on(name) for name in models[1:])]
    results = [
        s.evaluate(data, split=split, batch_size=batch_size, task=task, samples=samples)
        for s in sessions
    ]
    emit(results[0] if len(results) == 1 else results, as_json, lambda _: _render_scores(results))


def _render_questions(rows: list[dict]) -> None:
    table = Table("condition", "length", "accuracy", "answer log-lik/token", "questions")
    for r in rows:
        loglik = "-" if r["answer_loglik"] is None else f"{r['answer_loglik']:.3f}"
        table.add_row(
            r["condition"], str(r["length"]), f"{r['accuracy']:.3f}", loglik, str(r["questions"])
        )
    out.print(table)


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
    input_file: InputOpt = None,
    output: OutputOpt = None,
    input_format: FormatOpt = None,
    text_field: TextFieldOpt = None,
    label_field: Annotated[
        str | None,
        typer.Option(help="With --input: the gold label field (default: the task's, if there)."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="With --input: inputs per forward pass.")
    ] = 32,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    template: TemplateOpt = None,
    verbalizer: VerbalizerOpt = None,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The label and the probability of each label for one or more texts, or with --input for
    every input of a file (one JSON line each; accuracy and macro-F1 when it has labels)."""
    _check_sources(
        text,
        input_file,
        "classify",
        {"--output": output, "--format": input_format, "--text-field": text_field},
        {"--label-field": label_field},
    )
    place, model = _placed(prompt, model, device, dtype, device_map, max_memory)
    options = {"config": config, "template": template, "verbalizer": parse_verbalizer(verbalizer)}
    if input_file is None:
        _predict_texts(prompt, text, model, place, dtype, as_json, options)
        return
    from softprompt.batch_files import predict_file

    reporter = progress_reporter("predict", rows_on_stdout=_to_stdout(output), quiet=as_json)
    with quiet_closed_pipe(), reporter as show:
        summary = predict_file(
            prompt,
            input_file,
            output,
            model=model,
            fmt=input_format,
            text_field=text_field,
            label_field=label_field,
            batch_size=batch_size,
            dtype=dtype,
            device=place,
            progress=show,
            **options,
        )
    _print_summary(summary, as_json, "predicted")


def _placed(prompt, model, device: str, dtype: str, device_map, max_memory):
    """The device, and the model: its spec, or with --device-map the model spread out."""
    from softprompt.models import resolve_device

    place = resolve_device(device, "--device")
    return place, placed_model(prompt, model, place, dtype, device_map, max_memory)


def _predict_texts(prompt, text, model, place, dtype: str, as_json: bool, options: dict) -> None:
    """`predict -t TEXT ...`: the texts' labels as a list (JSON) or one line each."""
    from softprompt.session import Session

    results = Session(prompt, model, dtype=dtype, device=place, **options).predict(text)

    def render(rows: list[dict]) -> None:
        for row in rows:
            probs = "  ".join(f"{k} {v:.3f}" for k, v in row["probabilities"].items())
            out.print(f"[bold]{row['label']}[/]  ({probs})  {row['text']}")

    emit(results, as_json, render)


def _check_sources(
    text: list[str] | None, input_file: str | None, verb: str, *file_options: dict
) -> None:
    """Texts (--text) or a file (--input), one of the two; the file's options only with it."""
    if text and input_file is not None:
        raise UsageError("give either --text or --input FILE, not both")
    if input_file is not None:
        return
    if not text:
        raise UsageError(f"give at least one --text to {verb} (or --input FILE)")
    for given in file_options:
        for name, value in given.items():
            if value is not None:
                raise UsageError(f"{name} goes with --input FILE, not with --text")


def _to_stdout(output: str | None) -> bool:
    return output is None or output == "-"


def _print_summary(summary: dict, as_json: bool, verb: str) -> None:
    """After the rows: with --json the summary object (on stdout when the rows went to a file,
    else on stderr, so that stdout stays one JSON line per input); else one line on stderr."""
    if as_json:
        stream = sys.stderr if summary["output"] is None else sys.stdout
        stream.write(json.dumps(summary, ensure_ascii=False) + "\n")
        return
    line = f"{verb} {summary['inputs']} inputs of {summary['input']}"
    line += f" into {summary['output']}" if summary["output"] else ""
    if "accuracy" in summary:
        line += (
            f"; accuracy {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f} "
            f"against the {summary['examples']} labels of the input"
        )
    err.print(line, markup=False, highlight=False, soft_wrap=True)


def generate(
    prompt: Annotated[Path | None, typer.Argument(help="Prompt .safetensors (or none).")] = None,
    text: Annotated[
        list[str] | None, typer.Option("--text", "-t", help="Text to continue.")
    ] = None,
    input_file: InputOpt = None,
    output: OutputOpt = None,
    input_format: FormatOpt = None,
    text_field: TextFieldOpt = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="With --input: texts per generate call.")
    ] = 8,
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
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Continue texts as given (no template) with a prompt or prefix; --compare shows the bare
    model too. With --input, every input of a file, one JSON line each."""
    from softprompt.generation import SamplingOptions

    _check_sources(
        text,
        input_file,
        "continue",
        {"--output": output, "--format": input_format, "--text-field": text_field},
    )
    if compare and prompt is None:
        raise UsageError("--compare needs a PROMPT to compare against the bare model")
    options = SamplingOptions(
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    options.check()
    place, model = _placed(prompt, model, device, dtype, device_map, max_memory)
    if input_file is None:
        _generate_texts(prompt, text, model, place, dtype, as_json, options, num_samples, compare)
        return
    settings = {"fmt": input_format, "text_field": text_field or "text", "options": options}
    settings.update(num_samples=num_samples, compare=compare, batch_size=batch_size)
    _generate_inputs(prompt, input_file, output, model, place, dtype, as_json, settings)


def _generate_inputs(prompt, input_file, output, model, place, dtype, as_json, settings) -> None:
    """`generate --input FILE`: the library writes the rows; here the progress and summary."""
    from softprompt.batch_files import generate_file

    reporter = progress_reporter("generate", rows_on_stdout=_to_stdout(output), quiet=as_json)
    with quiet_closed_pipe(), reporter as show:
        summary = generate_file(
            prompt,
            input_file,
            output,
            model=model,
            dtype=dtype,
            device=place,
            progress=show,
            **settings,
        )
    _print_summary(summary, as_json, "continued")


def _generate_texts(prompt, text, model, place, dtype, as_json, options, num_samples, compare):
    """`generate -t TEXT ...`: the rows of generate_samples as a list (JSON) or printed."""
    from softprompt.session import Session

    session = Session(prompt, model, dtype=dtype, device=place)
    rows = session.generate(text, options, num_samples=num_samples, compare=compare)
    emit(rows, as_json, lambda items: _render_generations(items, compare))


def _render_generations(items: list[dict], compare: bool) -> None:
    """A with/without table for --compare, else each text followed by its continuation."""
    if compare:
        table = Table(show_lines=True)
        for header in ("text", "with prompt", "without prompt"):
            table.add_column(header, overflow="fold")  # a long CJK run folds, is not cut to …
        for item in items:
            cells = (item["text"], item["with_prompt"], item["without_prompt"])
            table.add_row(*(Text(cell) for cell in cells))  # as written: no [markup]
        out.print(table)
        return
    for item in items:
        continuation = next(v for k, v in item.items() if k != "text")
        out.print(f"[bold]{escape(item['text'])}[/]{escape(continuation)}")
