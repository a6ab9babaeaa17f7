"""`softprompt cartridge`: train a cartridge from documents (self-study) in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from softprompt.cli.common import JsonOpt, ModelOpt, emit, out


def cartridge(
    documents: Annotated[
        list[Path], typer.Argument(help="Documents: .txt/.md/.jsonl files or folders of them.")
    ],
    out_path: Annotated[Path, typer.Option("--out", help="The cartridge file to write.")],
    length: Annotated[int, typer.Option(min=1, help="Cartridge positions.")] = 256,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 200,
    model: ModelOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set task.conversations=16"),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run beside --out.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a cartridge: a prefix that stands in for the documents (self-study: the model
    answers seed prompts with each chunk in context, the cartridge learns to give the same
    next-token distributions without it). The run folder is --out with .run for .safetensors."""
    from softprompt.training.cartridge import train_cartridge

    summary = train_cartridge(
        documents,
        out_path,
        model=model,
        length=length,
        steps=steps,
        overrides=set_ or [],
        resume=resume,
        progress=not quiet,
    )

    def render(s: dict) -> None:
        out.print(
            f"cartridge {s['cartridge']}: best dev KL/token {s['best_value']:.4f} at step "
            f"{s['best_step']} of {s['steps']} ({s['train_seconds']:.0f} s)"
        )

    emit(summary, as_json, render)
