"""What the command modules share: the consoles, the option types several commands take, and
the small helpers that turn options into library arguments and results into output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, ConsoleDimensions

from softprompt.errors import UsageError

PIPE_WIDTH = 10_000  # columns of stdout when it is not a terminal: a table row stays one line


class OutputConsole(Console):
    """stdout's console. On a terminal, its width; into a pipe or a file (where rich would
    assume 80 columns, or the width of a terminal on stderr), PIPE_WIDTH columns, so that
    tables and long lines are never wrapped mid-sentence for a reader that is a program.
    COLUMNS, when set, still decides."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        if self._width is None and not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


out = OutputConsole()
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Model spec: bundled alias, local dir, .gguf file or hub id."
    ),
]
ModelsOpt = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="Model spec; repeat to evaluate on several models."),
]
DtypeOpt = Annotated[str, typer.Option(help="Model weights dtype: float32 or bfloat16.")]
TemplateOpt = Annotated[
    str | None, typer.Option(help="Template with {text} (default: from the prompt's metadata).")
]
VerbalizerOpt = Annotated[
    str | None,
    typer.Option(help='Verbalizer as JSON, e.g. \'{"negative": " bad", "positive": " good"}\'.'),
]
DataOpt = Annotated[str | None, typer.Option(help="Folder, file or hf:NAME.")]
SplitOpt = Annotated[str, typer.Option(help="train, dev (or validation) or test.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Examples per forward pass.")]
DeviceOpt = Annotated[
    str, typer.Option(help="cpu, cuda, cuda:1 ..., or auto: the GPU when there is one.")
]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        help="auto: spread a model too big for one device over the GPUs, then CPU memory, then "
        "disk (accelerate's dispatch; docs/scale.md)."
    ),
]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(help="With --device-map: budgets per device, e.g. 0=70GiB,1=70GiB,cpu=100GiB."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Take the task (template, verbalizer) from a config."),
]

InputOpt = Annotated[
    str | None,
    typer.Option(
        "--input",
        "-i",
        help="File of inputs, one JSON line out per input: .jsonl, .csv, .txt (one text per "
        "line), or - for stdin.",
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output", "-o", help="With --input: write the JSON lines to this file (atomically)."
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option(
        "--format", help="With --input: jsonl, csv or txt (default: the suffix; stdin: jsonl)."
    ),
]
TextFieldOpt = Annotated[
    str | None,
    typer.Option(help="With --input: the record field holding the text (default: the task's)."),
]


def emit(data: Any, as_json: bool, render: Callable[[Any], object]) -> None:
    """JSON on stdout with --json, else the command's human rendering of the same data."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    else:
        render(data)


def parse_verbalizer(text: str | None) -> dict[str, str] | None:
    """The --verbalizer option's JSON as a label -> word dict (None when not given)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--verbalizer is not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UsageError('--verbalizer must be a JSON object of label: word, e.g. {"a": " yes"}')
    return {str(k): v for k, v in value.items()}


def display_name(name: str) -> str:
    """A short name for a prompt file: its run directory for prompt/last.safetensors."""
    prefix, _, path = name.rpartition(":")
    shown = Path(path).parent.name if Path(path).stem in ("prompt", "last") else Path(path).stem
    return f"{prefix}:{shown}" if prefix else shown


def default_model(prompt_path: Path | None, model: str | None) -> str:
    """The given model, else the first model the prompt was trained on, else the default (the
    library's `model_for`, so that the CLI and the Python API pick the same model)."""
    from softprompt.artifacts import open_artifact
    from softprompt.evaluation import model_for

    if model:
        return model
    return str(model_for(open_artifact(prompt_path)))


def placed_model(prompt, model, place, dtype: str, device_map, max_memory):
    """The model to use: the spec as given, or with --device-map the model loaded and spread
    over the devices (so that sessions and batch files all take that one)."""
    if device_map is None:
        if max_memory is not None:
            raise UsageError("--max-memory goes with --device-map auto")
        return model
    from softprompt.models import load_backbone
    from softprompt.models.dispatch import parse_max_memory

    return load_backbone(
        default_model(prompt, model),
        dtype=dtype,
        device=place,
        device_map=device_map,
        max_memory=parse_max_memory(max_memory),
    )


@contextmanager
def progress_reporter(
    what: str, *, rows_on_stdout: bool = False, quiet: bool = False
) -> Iterator[Callable[[int, int], None]]:
    """A `(done, total)` callback showing a batch job's progress on stderr
    (`softprompt.progress`): a live bar when stderr is a terminal (and stdout is not the same
    screen receiving rows, which a live bar would tear), else log lines (`what: 50/200 inputs
    (25%), 3 s`, at each tenth); with `quiet`, no log lines."""
    from softprompt.progress import Progress

    live = err.is_terminal and not (rows_on_stdout and out.is_terminal)
    with Progress(
        what, unit="inputs", live=live, enabled=live or not quiet, console=err
    ) as progress:
        yield lambda done, total: progress.update(done, total)


@contextmanager
def quiet_closed_pipe() -> Iterator[None]:
    """Rows piped into a reader that stops early (`... | head`): exit 1 quietly, as a closed
    pipe ends other command-line tools, instead of a traceback on stderr."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit must not fail again
        sys.exit(1)
