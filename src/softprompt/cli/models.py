"""Commands about models themselves: models (the bundled aliases) and tiny-family."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from softprompt.cli.common import JsonOpt, emit, out
from softprompt.errors import UsageError


def models(
    prepare: Annotated[
        bool, typer.Option(help="Convert every installed bundled model into the cache now.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the bundled model aliases, their package, and whether they are cached."""
    from softprompt.models import ensure_bundled, list_models

    if prepare:
        for row in list_models():
            if row["installed"] and not row["cached"]:
                ensure_bundled(row["alias"])
    rows = list_models()

    def render(items: list[dict]) -> None:
        table = Table("alias", "model", "package", "installed", "cache")
        for r in items:
            cache = f"{r['cache_bytes'] / 2**20:.0f} MiB" if r["cached"] else "not cached"
            name = r["alias"] + (" (default)" if r["default"] else "")
            table.add_row(name, r["description"], r["package"], str(r["installed"]), cache)
        out.print(table)

    emit(rows, as_json, render)


def tiny_family(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the models (seed-0, seed-1, ...).")],
    count: Annotated[int, typer.Option(min=1, help="How many models.")] = 3,
    family: Annotated[str, typer.Option(help="llama, gpt2, gpt_neox, gemma3 or bert.")] = "bert",
    hidden: Annotated[int, typer.Option(min=8, help="Hidden size (a multiple of 4).")] = 64,
    pretrain_steps: Annotated[int, typer.Option(min=0, help="LM pre-training steps.")] = 300,
    corpus: Annotated[
        str, typer.Option(help="Data whose texts make the vocabulary and pre-training corpus.")
    ] = "examples/data",
    as_json: JsonOpt = False,
) -> None:
    """Build a family of tiny models differing only in seed (like MultiBERTs), for experiments."""
    from softprompt.models.tiny import FAMILIES, corpus_texts
    from softprompt.models.tiny import tiny_family as build_family

    if family not in FAMILIES:
        raise UsageError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    paths = build_family(
        out_dir, corpus_texts(corpus), count, family, hidden=hidden, pretrain_steps=pretrain_steps
    )
    emit([str(p) for p in paths], as_json, lambda ps: [out.print(p) for p in ps])
