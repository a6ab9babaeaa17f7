"""The OpenAI-compatible HTTP API (FastAPI): models, completions, chat completions, our
classify, health and metrics. Handlers are async and only talk to the engine thread through
its bounded queue; a bad request is answered with an OpenAI-style error object and the server
goes on serving."""

from __future__ import annotations

import asyncio
import hmac
import re
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from softprompt.decoding.engine import Call, Engine, QueueFull
from softprompt.errors import SoftpromptError
from softprompt.serving.adapters import Adapter, Adapters, RefusedAdapter
from softprompt.serving.completions import add_routes as add_completion_routes
from softprompt.serving.errors import APIError, busy
from softprompt.serving.metrics import ServerMetrics
from softprompt.serving.schemas import ClassifyRequest

# texts scored per engine call of /v1/classify: the model runs on one thread, so a request's
# texts are scored in slices between decoding steps, and a running stream waits for one
# slice (not the whole request) before its next token
CLASSIFY_SLICE = 16


class Service:
    """What the routes need: the engine, the adapters, the limits, the metrics."""

    def __init__(
        self,
        engine: Engine,
        adapters: Adapters,
        base_name: str,
        metrics: ServerMetrics,
        api_key: str | None = None,
    ) -> None:
        self.engine, self.adapters, self.base_name = engine, adapters, base_name
        self.metrics, self.api_key = metrics, api_key
        self.backbone = engine.backbone
        self.vocab_size = self.backbone.model.get_input_embeddings().num_embeddings
        config = self.backbone.model.config
        self.context = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", 2048
        )

    async def adapter(self, name: str) -> Adapter:
        """The adapter served as `name`; one not loaded now (`--max-loaded`) is loaded on a
        worker thread, so neither the event loop nor the engine waits for its file."""
        try:
            adapter = self.adapters.loaded(name)
            if adapter is None:
                adapter = await asyncio.to_thread(self.adapters.__getitem__, name)
            return adapter
        except KeyError:
            raise APIError(
                404,
                f"model {name!r} does not exist; GET /v1/models lists the served names",
                "model",
                "model_not_found",
            ) from None
        except RefusedAdapter as exc:
            message = f"model {name!r} is not served: {exc}"
            raise APIError(400, message, "model", "model_refused") from None

    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise APIError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer KEY'",
                None,
                "invalid_api_key",
            )


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over a running engine."""
    app = FastAPI(title="softprompt", docs_url=None, redoc_url=None)
    _error_handlers(app, service)
    _model_routes(app, service)
    add_completion_routes(app, service)
    _classify_route(app, service)
    return app


def _error_handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc.errors()[0]).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}").response()

    @app.middleware("http")
    async def account(request: Request, call_next):
        started = time.perf_counter()
        try:
            if request.url.path != "/health":
                service.check_key(request)
        except APIError as exc:
            response = exc.response()
        else:
            response = await call_next(request)
        endpoint = request.url.path
        adapter = getattr(request.state, "adapter", "")
        service.metrics.requests.labels(endpoint, adapter, str(response.status_code)).inc()
        service.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response


def _validation_error(first: dict) -> APIError:
    """A 400 naming the field: from the error's location, or from a message of our own
    validators that begins with it ("best_of: not supported ...")."""
    where = [str(p) for p in first.get("loc", ()) if p != "body"]
    message = first.get("msg", "invalid request").removeprefix("Value error, ")
    named = re.match(r"^([a-z_]+): ", message)
    if not where and named and first.get("type") == "value_error":
        return APIError(400, message, named.group(1))
    param = ".".join(where) or None
    if first.get("type") == "extra_forbidden":
        message = (
            "unknown field: softprompt serve takes the fields of OpenAI's API "
            "(docs/serving.md lists what it serves); leave it out"
        )
    elif first.get("type") == "json_invalid" or not where:
        message = f"the body is not a valid JSON request: {message}"
    return APIError(400, f"{param}: {message}" if param else message, param)


def _model_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.base_name, "adapters": len(service.adapters)}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        """Every served name (refused ones with their `error`); `loaded_at` changes when a
        replaced file is reloaded."""
        created = int(time.time())
        data = [
            {"object": "model", "created": created, "owned_by": "softprompt", **row}
            for row in service.adapters.listing()
        ]
        return {"object": "list", "data": data}


def _classify_route(app: FastAPI, service: Service) -> None:
    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest, request: Request):
        adapter = await service.adapter(body.model)
        request.state.adapter = adapter.name
        if adapter.artifact is None:
            raise APIError(
                400,
                "classify needs an adapter trained for a classification task, not the bare model",
                "model",
            )
        texts, rows = body.texts, []
        for start in range(0, len(texts), CLASSIFY_SLICE):
            rows += await _predict_slice(service, adapter, texts[start : start + CLASSIFY_SLICE])
        data = [
            {"index": i, "label": r["label"], "probabilities": r["probabilities"]}
            for i, r in enumerate(rows)
        ]
        return {"object": "list", "model": adapter.name, "data": data}


async def _predict_slice(service: Service, adapter: Adapter, texts: list[str]) -> list[dict]:
    """One slice of a classify request, scored on the engine thread between two steps."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def done(result, error):
        loop.call_soon_threadsafe(_settle, future, result, error)

    try:
        service.engine.submit(Call(lambda: adapter.session.predict(texts), done))
    except QueueFull:
        raise busy() from None
    try:
        return await future
    except SoftpromptError as exc:
        raise APIError(400, str(exc), "model") from None


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
