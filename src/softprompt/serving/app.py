"""The OpenAI-compatible HTTP API (FastAPI): models, completions, chat completions, our
classify, health and metrics. Handlers are async and only talk to the engine thread through
its bounded queue; a bad request is answered with an OpenAI-style error object and the server
goes on serving."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from softprompt.decoding.engine import Call, Engine, Job, QueueFull
from softprompt.decoding.options import SamplingOptions, row_seeds
from softprompt.errors import SoftpromptError
from softprompt.serving.adapters import Adapter
from softprompt.serving.metrics import ServerMetrics
from softprompt.serving.schemas import ChatRequest, ClassifyRequest, CompletionRequest

RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """An error answered as {"error": {message, type, param, code}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code=None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 401:
            kind = "authentication_error"
        body = {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status == 429 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def busy() -> APIError:
    """429: the engine's queue is full."""
    message = f"the server is busy (its queue is full); retry after {RETRY_AFTER_SECONDS} s"
    return APIError(429, message, None, "queue_full")


class Service:
    """What the routes need: the engine, the adapters, the limits, the metrics."""

    def __init__(
        self,
        engine: Engine,
        adapters: dict[str, Adapter],
        base_name: str,
        metrics: ServerMetrics,
        api_key: str | None = None,
    ) -> None:
        self.engine, self.adapters, self.base_name = engine, adapters, base_name
        self.metrics, self.api_key = metrics, api_key
        self.backbone = engine.backbone
        config = self.backbone.model.config
        self.context = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", 2048
        )

    def adapter(self, name: str) -> Adapter:
        if name not in self.adapters:
            raise APIError(
                404,
                f"model {name!r} does not exist; GET /v1/models lists the served names",
                "model",
                "model_not_found",
            )
        return self.adapters[name]

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

    def encode(self, text: str, adapter: Adapter, max_tokens: int) -> list[int]:
        ids = self.backbone.tokenizer(text).input_ids
        total = len(ids) + adapter.steering.length + max_tokens
        if total > self.context:
            raise APIError(
                400,
                f"the prompt is {len(ids)} tokens, the steering "
                f"{adapter.steering.length} and max_tokens {max_tokens}: {total} in "
                f"all, but the model takes at most {self.context}; shorten the "
                "prompt or lower max_tokens",
                "prompt",
                "context_length_exceeded",
            )
        return ids

    def submit(
        self, adapter: Adapter, prompts: list[list[int]], texts: list[str], body, max_tokens: int
    ):
        """Queue one job per prompt and choice; all or none (429 when the queue is full). A
        seeded choice samples what `generate` samples for its text, seed and sample number
        (the choice's index)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        options = SamplingOptions(
            max_new_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            seed=body.seed,
            stop=body.stops,
        )
        jobs = []
        for p, (ids, text) in enumerate(zip(prompts, texts)):
            for c in range(body.n):
                index = p * body.n + c
                seed = None if body.seed is None else row_seeds(body.seed, [text], [c])[0]

                def emit(kind, payload, index=index):
                    loop.call_soon_threadsafe(events.put_nowait, (index, kind, payload))

                jobs.append(Job(adapter.steering, ids, options, emit, adapter.name, seed))
        try:
            for job in jobs:
                self.engine.submit(job)
        except QueueFull:
            for job in jobs:
                job.cancelled.set()
            raise busy() from None
        return jobs, events


async def collect(jobs: list[Job], events: asyncio.Queue, request: Request) -> list[dict]:
    """Wait for every job's result; a client that goes away cancels them (their rows leave)."""
    results: dict[int, dict] = {}
    try:
        while len(results) < len(jobs):
            try:
                index, kind, payload = await asyncio.wait_for(events.get(), timeout=0.25)
            except TimeoutError:
                if await request.is_disconnected():
                    raise asyncio.CancelledError from None
                continue
            if kind == "error":
                raise APIError(500, f"generation failed: {payload}")
            if kind == "done":
                results[index] = payload
    finally:
        if len(results) < len(jobs):
            for job in jobs:
                job.cancelled.set()
    return [results[i] for i in range(len(jobs))]


def usage(results: list[dict], prompts: list[list[int]]) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion = sum(r["completion_tokens"] for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


async def stream(jobs, events, chunk) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI streams them: one chunk per text delta, a last chunk per
    choice with its finish reason, then `data: [DONE]`. A client that goes away cancels."""
    done = 0
    try:
        while done < len(jobs):
            index, kind, payload = await events.get()
            if kind == "delta":
                yield sse(chunk(index, payload, None))
            elif kind == "done":
                done += 1
                yield sse(chunk(index, "", payload["finish_reason"]))
            else:
                yield sse(
                    {
                        "error": {
                            "message": f"generation failed: {payload}",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
                return
        yield sse("[DONE]")
    finally:
        for job in jobs:
            job.cancelled.set()


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over a running engine."""
    app = FastAPI(title="softprompt", docs_url=None, redoc_url=None)
    _error_handlers(app, service)
    _model_routes(app, service)
    _generation_routes(app, service)
    _classify_route(app, service)
    return app


def _error_handlers(app: FastAPI, service: Service) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(where) or None
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        if first.get("type") == "json_invalid" or not where:
            message = f"the body is not a valid JSON request: {message}"
        return APIError(400, f"{param}: {message}" if param else message, param).response()

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


def _model_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": service.base_name, "adapters": len(service.adapters)}

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        created = int(time.time())
        data = [
            {
                "id": a.name,
                "object": "model",
                "created": created,
                "owned_by": "softprompt",
                "method": a.method,
            }
            for a in service.adapters.values()
        ]
        return {"object": "list", "data": data}


def _generation_routes(app: FastAPI, service: Service) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        adapter = service.adapter(body.model)
        request.state.adapter = adapter.name
        max_tokens = body.max_tokens or 16
        prompts = [service.encode(p, adapter, max_tokens) for p in body.prompts]
        texts = body.prompts
        return await _respond(service, adapter, prompts, texts, body, max_tokens, request, "text")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        adapter = service.adapter(body.model)
        request.state.adapter = adapter.name
        max_tokens = body.max_completion_tokens or body.max_tokens or 256
        text = _chat_text(service, [m.model_dump() for m in body.messages])
        prompts = [service.encode(text, adapter, max_tokens)]
        return await _respond(service, adapter, prompts, [text], body, max_tokens, request, "chat")


async def _respond(service, adapter, prompts, texts, body, max_tokens, request, kind):
    jobs, events = service.submit(adapter, prompts, texts, body, max_tokens)
    ident = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    if body.stream:

        def chunk(index, text, reason):
            return _chunk(kind, ident, created, adapter.name, index, text, reason)

        return StreamingResponse(stream(jobs, events, chunk), media_type="text/event-stream")
    results = await collect(jobs, events, request)
    choices = [_choice(kind, i, r) for i, r in enumerate(results)]
    obj = "chat.completion" if kind == "chat" else "text_completion"
    return {
        "id": ident,
        "object": obj,
        "created": created,
        "model": adapter.name,
        "choices": choices,
        "usage": usage(results, prompts),
    }


def _choice(kind: str, index: int, result: dict) -> dict:
    if kind == "chat":
        return {
            "index": index,
            "message": {"role": "assistant", "content": result["text"]},
            "finish_reason": result["finish_reason"],
        }
    return {
        "index": index,
        "text": result["text"],
        "logprobs": None,
        "finish_reason": result["finish_reason"],
    }


def _chunk(kind, ident, created, model, index, text, reason) -> dict:
    if kind == "chat":
        delta = {"role": "assistant", "content": text} if text else {}
        choice = {"index": index, "delta": delta, "finish_reason": reason}
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }
    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": reason}
    return {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def _chat_text(service: Service, messages: list[dict]) -> str:
    tokenizer = service.backbone.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(
            400,
            f"model {service.base_name} has no chat template; use /v1/completions",
            "messages",
            "no_chat_template",
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _classify_route(app: FastAPI, service: Service) -> None:
    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest, request: Request):
        adapter = service.adapter(body.model)
        request.state.adapter = adapter.name
        if adapter.artifact is None:
            raise APIError(
                400,
                "classify needs an adapter trained for a classification task, not the bare model",
                "model",
            )
        future = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def done(result, error):
            loop.call_soon_threadsafe(_settle, future, result, error)

        def run():
            return adapter.session.predict(body.texts)

        try:
            service.engine.submit(Call(run, done))
        except QueueFull:
            raise busy() from None
        try:
            rows = await future
        except SoftpromptError as exc:
            raise APIError(400, str(exc), "model") from None
        data = [
            {"index": i, "label": r["label"], "probabilities": r["probabilities"]}
            for i, r in enumerate(rows)
        ]
        return {"object": "list", "model": adapter.name, "data": data}


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
