"""`softprompt serve`: many prompts and prefixes on one frozen model behind an
OpenAI-compatible API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from softprompt.cli.common import DeviceOpt, DtypeOpt, err
from softprompt.errors import UsageError

AdaptersOpt = Annotated[
    Path | None,
    typer.Option(
        help="A folder of artifacts and PEFT adapter folders; each is served, and the "
        "folder is watched: files added, replaced or removed are served, reloaded or "
        "dropped while the server runs."
    ),
]
MaxLoadedOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Keep at most N adapters of --adapters loaded: others load on first "
        "request, the least recently used are unloaded.",
    ),
]
KvMemoryOpt = Annotated[
    float | None,
    typer.Option(
        help="Gigabytes of keys/values the server may hold (default: half the memory free at "
        "start); a request that does not fit now waits in the queue."
    ),
]
MaxKvTokensOpt = Annotated[
    int | None, typer.Option(help="The same budget in tokens (instead of --kv-memory).")
]
PrefillChunkOpt = Annotated[
    int, typer.Option(min=1, help="Most prompt tokens fed per step, so streams keep flowing.")
]
WatchOpt = Annotated[float, typer.Option(min=0.05, help="Seconds between two looks at --adapters.")]


def serve(
    artifacts: Annotated[
        list[Path] | None, typer.Argument(help="Prompt or prefix .safetensors files to serve.")
    ] = None,
    adapters: AdaptersOpt = None,
    max_loaded: MaxLoadedOpt = None,
    watch_interval: WatchOpt = 1.0,
    model: Annotated[
        str | None,
        typer.Option(help="Base model (default: the model the first artifact was trained on)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="Rows decoding at once.")] = 16,
    queue_size: Annotated[
        int, typer.Option(min=1, help="Requests waiting for a row before 429.")
    ] = 256,
    api_key: Annotated[
        str | None,
        typer.Option(help="Require 'Authorization: Bearer KEY' (or set SOFTPROMPT_API_KEY)."),
    ] = None,
    kv_memory: KvMemoryOpt = None,
    max_kv_tokens: MaxKvTokensOpt = None,
    prefill_chunk: PrefillChunkOpt = 256,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    device_map: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Serve every prompt and prefix given (each under its file stem) and the bare model, mixed
    in one batch, with OpenAI's completions, chat completions and models endpoints, plus
    /v1/classify, /health and /metrics. SIGINT/SIGTERM finish the requests in flight."""
    from softprompt.serving.server import Server

    _refuse_device_map(device_map)
    server = Server(
        artifacts or [],
        adapters_dir=adapters,
        model=model,
        host=host,
        port=port,
        max_batch=max_batch,
        queue_size=queue_size,
        api_key=api_key or os.environ.get("SOFTPROMPT_API_KEY") or None,
        device=device,
        dtype=dtype,
        max_loaded=max_loaded,
        watch_interval=watch_interval,
        kv_memory=kv_memory,
        max_kv_tokens=max_kv_tokens,
        prefill_chunk=prefill_chunk,
    )
    for line in server.refused:
        err.print(f"[yellow]refused:[/] {line}", highlight=False, soft_wrap=True, markup=True)
    names = ", ".join(server.adapters)
    err.print(f"serving {names} on http://{host}:{port}", highlight=False, soft_wrap=True)
    server.serve_forever()


def _refuse_device_map(device_map: str | None) -> None:
    if device_map is not None:
        raise UsageError(
            "serve --device-map: not yet; the engine keeps every row's keys and values in one "
            "block pool on one device, and a model spread over devices needs a pool per layer's "
            "device; serve on one device (--device cuda:0), or use evaluate, predict or generate "
            "with --device-map auto"
        )
