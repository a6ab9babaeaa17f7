"""What the command modules share: the consoles, the option types several commands take, and
the small helpers that turn options into library arguments and results into output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from softprompt.errors import UsageError

out = Console()
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
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Take the task (template, verbalizer) from a config."),
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
    from softprompt.evaluation import model_for
    from softprompt.methods import load_artifact

    if model:
        return model
    return str(model_for(load_artifact(prompt_path) if prompt_path is not None else None))
