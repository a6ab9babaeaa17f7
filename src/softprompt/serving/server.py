"""`softprompt serve`: one frozen model, many adapters, behind the HTTP API.

`Server` loads the model and the adapters, starts the engine and uvicorn; tests run it
in-process (`with Server(...) as server: server.url`), the command runs it until SIGINT or
SIGTERM, which stop new connections, let the requests in flight finish, and exit 0."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn

from softprompt.artifacts import open_artifact
from softprompt.decoding.engine import Engine
from softprompt.errors import ModelError, UsageError
from softprompt.methods.base import trained_model
from softprompt.models import Backbone, load_backbone, resolve_device
from softprompt.serving.adapters import Adapters, artifact_sources, folder_sources
from softprompt.serving.app import Service, create_app
from softprompt.serving.metrics import ServerMetrics

PREFILL_CHUNK = 256  # prompt tokens per step: a long prompt joins without stalling the others


class Server:
    """An OpenAI-compatible server of `artifacts` (files, PEFT folders) and every adapter in
    `adapters_dir` on one frozen model (default: the model the first artifact was trained
    on), the bare model served under its own name."""

    def __init__(
        self,
        artifacts: list[str | Path] = (),
        *,
        adapters_dir: str | Path | None = None,
        model: str | Backbone | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        max_batch: int = 16,
        queue_size: int = 256,
        api_key: str | None = None,
        device: str = "auto",
        dtype: str = "float32",
        max_loaded: int | None = None,
        watch_interval: float = 1.0,
        kv_memory: float | None = None,
        max_kv_tokens: int | None = None,
        prefill_chunk: int | None = PREFILL_CHUNK,
    ) -> None:
        if max_batch < 1 or queue_size < 1:
            raise UsageError("--max-batch and the queue size must be at least 1")
        _check_kv_options(kv_memory, max_kv_tokens, prefill_chunk)
        if max_loaded is not None and max_loaded < 1:
            raise UsageError("--max-loaded must be at least 1")
        sources = artifact_sources(list(artifacts), adapters_dir)
        folder = Path(adapters_dir) if adapters_dir is not None else None
        listed = [src for src, _ in folder_sources(folder).values()] if folder else []
        self.backbone, self.base_name = _base_model(model, [*sources, *listed], device, dtype)
        if self.backbone.kind != "causal":
            raise ModelError(f"serve needs a causal LM; {self.backbone.name} is a masked LM")
        self.adapters = Adapters(self.backbone, self.base_name, sources, folder, max_loaded)
        self.refused = self.adapters.refused
        self.watch_interval = watch_interval
        self.engine = Engine(
            self.backbone, max_batch=max_batch, queue_size=queue_size, prefill_chunk=prefill_chunk
        )
        self.engine.pool.set_budget(max_kv_tokens, kv_memory)  # default: from free memory
        self.metrics = ServerMetrics(lambda: self.engine.pending, lambda: self.engine.running)
        self.engine.on_step = self.metrics.step
        service = Service(self.engine, self.adapters, self.base_name, self.metrics, api_key)
        self.app = create_app(service)
        self.host, self.port = host, port
        self._uvicorn: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _config(self) -> uvicorn.Config:
        return uvicorn.Config(
            self.app, log_level="warning", timeout_graceful_shutdown=30, lifespan="off"
        )

    def start(self) -> Server:
        """Serve in a background thread (for tests and Python users); returns when ready."""
        sock = _bound_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.engine.start()
        self.adapters.watch(self.watch_interval)
        self._uvicorn = uvicorn.Server(self._config())
        self._uvicorn.install_signal_handlers = lambda: None  # the caller's signals stay theirs
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish, stop the engine."""
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=35)
        self.adapters.close()
        self.engine.stop()

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM; in-flight requests finish first."""
        sock = _bound_socket(self.host, self.port)
        self.engine.start()
        self.adapters.watch(self.watch_interval)
        # uvicorn raises the signal it caught again once it has shut down; a handler that does
        # nothing lets that end the process normally (exit 0) instead of by the signal
        previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            uvicorn.Server(self._config()).run(sockets=[sock])
        finally:
            self.adapters.close()
            self.engine.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _check_kv_options(kv_memory, max_kv_tokens, prefill_chunk) -> None:
    if kv_memory is not None and max_kv_tokens is not None:
        raise UsageError("give --kv-memory or --max-kv-tokens, not both (they set one budget)")
    if kv_memory is not None and kv_memory <= 0:
        raise UsageError(f"--kv-memory {kv_memory}: give a positive number of gigabytes")
    if max_kv_tokens is not None and max_kv_tokens < 1:
        raise UsageError(f"--max-kv-tokens {max_kv_tokens}: give at least 1")
    if prefill_chunk is not None and prefill_chunk < 1:
        raise UsageError(f"--prefill-chunk {prefill_chunk}: give at least 1 token")


def serve(artifacts: list[str | Path] = (), **options) -> None:
    """Run a server until SIGINT/SIGTERM (see `Server` for the options)."""
    server = Server(artifacts, **options)
    for line in server.refused:
        print(f"refused: {line}", file=sys.stderr)
    server.serve_forever()


def _base_model(model, sources: list[Path], device: str, dtype: str) -> tuple[Backbone, str]:
    """The backbone and the name the bare model is served under."""
    if isinstance(model, Backbone):
        return model, Path(model.name).name
    spec = model or next((name for s in sources if (name := trained_model(open_artifact(s)))), None)
    if spec is None:
        raise UsageError("no model to serve: pass --model, or artifacts that name their model")
    backbone = load_backbone(spec, dtype=dtype, device=resolve_device(device, "--device"))
    return backbone, Path(spec).name if Path(spec).exists() else spec


def _bound_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port"
        ) from exc
    sock.listen(128)
    return sock
