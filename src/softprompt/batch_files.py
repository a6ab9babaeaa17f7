"""Batch prediction and generation over files: every record of a JSONL, CSV or TXT file (or of
stdin) classified, or continued, in batches, one JSON line out per input.

Each output line keeps the input record as it was under "input" (for TXT, `{"text": line}`),
next to what was predicted ("label", "probabilities") or generated ("generated" or
"with_prompt", and "without_prompt" with `compare`), so that a gold label in the input never
collides with the prediction. The whole input is read and checked before the model runs, and an
output file is written atomically: a bad record or a failure midway leaves no half file.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from softprompt.artifacts import ArtifactSource
from softprompt.data import DataSpec, Example, csv_records, jsonl_records, record_to_example
from softprompt.errors import DataError, UsageError
from softprompt.evaluation import prediction_rows
from softprompt.files import atomic_text_file
from softprompt.generation import SamplingOptions
from softprompt.models import Backbone
from softprompt.session import Session
from softprompt.tasks.classification import classification_metrics

FORMATS = ("jsonl", "csv", "txt")
STDIN = "-"
ProgressCallback = Callable[[int, int], object]  # (inputs done, inputs in all)
Output = str | Path | TextIO | None  # a file path; None or "-" for stdout; or an open stream


@dataclass(frozen=True)
class Inputs:
    """The records of an input file as they were (they go to the output) and their examples."""

    name: str
    records: list[dict]
    examples: list[Example]

    @property
    def labelled(self) -> bool:
        """Whether every example has a label (then accuracy and macro-F1 can be reported)."""
        return all(example.label is not None for example in self.examples)


def input_format(source: str | Path, fmt: str | None = None) -> str:
    """The format of an input: `fmt` when given, else the file's suffix (jsonl for stdin)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
        return fmt
    if str(source) == STDIN:
        return "jsonl"
    suffix = Path(source).suffix.lower()
    if suffix.lstrip(".") not in FORMATS:
        raise DataError(
            f"{source}: unsupported file type {suffix!r}; use .jsonl, .csv or .txt "
            "(or name the format with --format)"
        )
    return suffix.lstrip(".")


def read_records(source: str | Path, fmt: str | None = None) -> tuple[str, list[tuple[dict, str]]]:
    """The name of an input (a file, or `-` for stdin) and its records with their `name:line`,
    never empty. JSONL and CSV records are kept as they are; a TXT line is `{"text": line}`."""
    kind = input_format(source, fmt)
    if str(source) == STDIN:
        stream = _stdin()
        try:
            return "<stdin>", _records(stream, "<stdin>", kind)
        finally:
            if stream is not sys.stdin:
                stream.detach()  # leave sys.stdin open for the caller
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: Excel's CSV BOM
            return str(path), _records(handle, str(path), kind)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _stdin() -> TextIO:
    """Standard input as UTF-8 text, whatever the locale (CSV wants untranslated newlines)."""
    binary = getattr(sys.stdin, "buffer", None)
    if binary is None:  # replaced by a text stream (tests, embedding applications)
        return sys.stdin
    return io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")


def _records(handle: TextIO, name: str, kind: str) -> list[tuple[dict, str]]:
    try:
        if kind == "jsonl":
            records = list(jsonl_records(handle, name))
        elif kind == "csv":
            records = list(csv_records(handle, name))
        else:
            records = [
                ({"text": line.rstrip("\r\n")}, f"{name}:{number}")
                for number, line in enumerate(handle, start=1)
                if line.strip()
            ]
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if not records:
        raise DataError(f"input {name} is empty; add examples to it")
    return records


def read_inputs(
    source: str | Path,
    fmt: str | None = None,
    *,
    text_field: str = "text",
    text_b_field: str | None = None,
    label_field: str | None = None,
    require_label: bool = False,
) -> Inputs:
    """Read an input file (or stdin) into records and examples, naming the line of any problem.

    The label is read when `require_label`, or when the first record has `label_field`: then
    every record must have it. TXT lines have one field, "text", whatever `text_field` says."""
    name, records = read_records(source, fmt)
    if input_format(source, fmt) == "txt":
        text_field = "text"
    has_label = label_field is not None and (require_label or label_field in records[0][0])
    spec = DataSpec(
        source=name,
        text_field=text_field,
        label_field=label_field if has_label else None,
        text_b_field=text_b_field,
    )
    examples = [record_to_example(record, spec, where) for record, where in records]
    return Inputs(name=name, records=[record for record, _ in records], examples=examples)


def check_output(output: Output) -> Path | None:
    """The output file to write (None for stdout or a stream), refused before any work when
    its folder does not exist or it is a folder."""
    if output is None or output == STDIN or not isinstance(output, (str, Path)):
        return None
    path = Path(output).expanduser()
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder; give a file for the JSON lines")
    if not path.parent.is_dir():
        raise UsageError(f"--output folder {path.parent} not found; create it first")
    return path


@contextmanager
def open_output(output: Output) -> Iterator[TextIO]:
    """Where the JSON lines go: stdout (None or "-"), a stream, or a file written atomically
    (it appears only when the block ends without an error)."""
    path = check_output(output)
    if path is not None:
        with atomic_text_file(path) as handle:
            yield handle
        return
    stream = sys.stdout if output is None or output == STDIN else output
    yield stream
    stream.flush()


def write_line(handle: TextIO, row: dict) -> None:
    """One output row as one line of JSON (UTF-8 as it is, no escapes)."""
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")


@torch.no_grad()
def predict_file(
    prompt: ArtifactSource,
    source: str | Path,
    output: Output = None,
    *,
    model: str | Backbone | None = None,
    fmt: str | None = None,
    config: str | Path | None = None,
    template: str | None = None,
    verbalizer: dict[str, str] | None = None,
    text_field: str | None = None,
    label_field: str | None = None,
    batch_size: int = 32,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
) -> dict:
    """Classify every input of a file (or stdin, `-`) under a prompt, in length-sorted batches,
    and write one JSON line per input, in input order: {"label", "probabilities", "input"}.

    The text, second text and label fields are the prompt's task's (its config's), unless
    `text_field` / `label_field` say otherwise; an explicit `label_field` must be in every
    record. `model` defaults to the prompt's own (`model_for`), as in `predict`. Returns a
    summary: the counts, and for a labelled input the evaluation's metrics (loss, accuracy,
    macro-F1) of the predictions against the input's labels."""
    check_output(output)
    overrides = {"config": config, "template": template, "verbalizer": verbalizer}
    session = Session(prompt, model, dtype=dtype, device=device, **overrides)
    fields = session.classification_config
    inputs = read_inputs(
        source,
        fmt,
        text_field=text_field or fields.text_field,
        text_b_field=fields.text_b_field,
        label_field=label_field or fields.label_field,
        require_label=label_field is not None,
    )
    task = session.classifier
    encoded = [task.encode(example, with_label=inputs.labelled) for example in inputs.examples]
    scores = session.class_scores(encoded, batch_size, _counter(progress, encoded))
    with open_output(output) as handle:
        for record, row in zip(inputs.records, prediction_rows(task, scores)):
            write_line(handle, {**row, "input": record})
    summary = _summary(session, inputs, output)
    if inputs.labelled:
        labels = torch.tensor([item.label for item in encoded])
        summary.update(classification_metrics(task, scores, labels))
    return summary


def _counter(progress: ProgressCallback | None, items: list) -> Callable[[int], None] | None:
    """A per-batch callback that tells `progress` the running count of inputs done."""
    if progress is None:
        return None
    done = [0]

    def advance(count: int) -> None:
        done[0] += count
        progress(done[0], len(items))

    progress(0, len(items))
    return advance


def _summary(session: Session, inputs: Inputs, output: Output) -> dict:
    path = check_output(output)
    return {
        "model": session.backbone.name,
        "prompt": session.source,
        "input": inputs.name,
        "output": str(path) if path is not None else None,
        "inputs": len(inputs.examples),
    }


@torch.no_grad()
def generate_file(
    prompt: ArtifactSource,
    source: str | Path,
    output: Output = None,
    *,
    model: str | Backbone | None = None,
    fmt: str | None = None,
    text_field: str = "text",
    options: SamplingOptions | None = None,
    num_samples: int = 1,
    compare: bool = False,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    progress: ProgressCallback | None = None,
) -> dict:
    """Continue the text of every input of a file (or stdin, `-`) as given, `batch_size` texts
    per generate call, and write one JSON line per input as each batch is done: "input" (the
    record) and "generated" (no prompt) or "with_prompt" (and "without_prompt" with `compare`),
    a list of `num_samples` continuations when more than one.

    Each row samples from its own generator seeded from (seed, sample number, text), so an
    input's continuation is what `generate_samples` gives for its text alone, whatever the
    batch size or its place in the file. `model` defaults to the prompt's own (`model_for`).
    Returns a summary (counts)."""
    options = options or SamplingOptions()
    options.check()
    if compare and prompt is None:
        raise UsageError("--compare needs a PROMPT to compare against the bare model")
    check_output(output)
    inputs = read_inputs(source, fmt, text_field=text_field)
    session = Session(prompt, model, dtype=dtype, device=device).load()
    texts = [example.text for example in inputs.examples]
    advance = _counter(progress, texts)
    with open_output(output) as handle:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            rows = session.generate(chunk, options, num_samples=num_samples, compare=compare)
            for offset in range(len(chunk)):
                samples = rows[offset * num_samples : (offset + 1) * num_samples]
                record = inputs.records[start + offset]
                write_line(handle, {"input": record, **_merged(samples)})
            if advance is not None:
                advance(len(chunk))
    return _summary(session, inputs, output)


def _merged(samples: list[dict[str, str]]) -> dict:
    """The generated fields of one input's sample rows: a string each for one sample, else a
    list of the samples in order."""
    keys = [key for key in samples[0] if key != "text"]
    if len(samples) == 1:
        return {key: samples[0][key] for key in keys}
    return {key: [sample[key] for sample in samples] for key in keys}
