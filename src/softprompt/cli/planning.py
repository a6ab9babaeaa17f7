"""`softprompt plan`: a training run's predicted peak memory per process, and whether it fits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from softprompt.cli.common import JsonOpt, emit, out


def plan(
    config: Annotated[Path, typer.Argument(help="Training config (YAML).")],
    world: Annotated[int, typer.Option(min=1, help="Processes (GPUs) of the launch.")] = 1,
    device_memory: Annotated[
        float | None, typer.Option(min=0, help="Memory of one device in GiB: does it fit?")
    ] = None,
    overhead: Annotated[
        float, typer.Option(min=0, help="GiB a process holds before any model (runtime).")
    ] = 0.0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set train.shard=fsdp")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predicted peak memory per process of a training run (weights / world, gathered layers,
    activations with or without checkpointing, prompt and optimizer state); see docs/scale.md."""
    from softprompt.config import load_config
    from softprompt.training.plan import plan_run

    result = plan_run(load_config(config, set_ or []), world, device_memory, overhead)

    def render(r: dict) -> None:
        for spec, terms in r["models"].items():
            parts = ", ".join(f"{k} {_size(v)}" for k, v in terms.items() if k != "peak")
            out.print(f"{spec}: {parts}", markup=False, highlight=False)
        line = f"peak per process ({world} process(es)) {_size(r['peak'])}"
        if r["fits"] is not None:
            line += f": fits {device_memory:g} GiB" if r["fits"] else ": does NOT fit"
        out.print(line, markup=False, highlight=False)

    emit(result, as_json, render)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
