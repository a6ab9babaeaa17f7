"""`/v1/completions` and `/v1/chat/completions`: a request's prompts (texts or token ids)
checked and turned into engine jobs, one per prompt and choice, and their events turned into a
reply or a stream of server-sent events, with log-probabilities when asked."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from softprompt.decoding.engine import Delta, Failed, Finished, Job, QueueFull, Started
from softprompt.decoding.options import SamplingOptions, row_seeds
from softprompt.decoding.text import TokenOffsets
from softprompt.serving.adapters import Adapter
from softprompt.serving.errors import APIError, busy
from softprompt.serving.replies import Reply
from softprompt.serving.schemas import ChatRequest, CompletionRequest


@dataclass(frozen=True)
class Prompt:
    """One prompt of a request: its text (as given, or its ids decoded) and its token ids."""

    text: str
    ids: list[int]


def encode(
    service, given: str | list[int], adapter: Adapter, max_tokens: int, special: bool = True
) -> Prompt:
    """A prompt's token ids, checked against the vocabulary and the model's context. A text
    gets the tokenizer's special tokens (its BOS) unless `special` is False: a chat template's
    text, which writes its own where the model wants them (as transformers and vLLM tokenize
    it), so that a template that writes a BOS does not get a second one."""
    tokenizer = service.backbone.tokenizer
    if isinstance(given, str):
        prompt = Prompt(given, tokenizer(given, add_special_tokens=special).input_ids)
    else:
        bad = [i for i in given if not 0 <= i < service.vocab_size]
        if bad:
            raise APIError(
                400,
                f"prompt: token id {bad[0]} is not in the vocabulary (0 to "
                f"{service.vocab_size - 1}); send ids of this model's tokenizer",
                "prompt",
            )
        prompt = Prompt(tokenizer.decode(given, skip_special_tokens=True), list(given))
    total = len(prompt.ids) + adapter.steering.length + max_tokens
    if total > service.context:
        raise APIError(
            400,
            f"the prompt is {len(prompt.ids)} tokens, the steering {adapter.steering.length} "
            f"and max_tokens {max_tokens}: {total} in all, but the model takes at most "
            f"{service.context}; shorten the prompt or lower max_tokens",
            "prompt",
            "context_length_exceeded",
        )
    budget = service.engine.pool.max_tokens
    if budget is not None and total > budget:
        raise APIError(
            400,
            f"the request needs up to {total} tokens of keys/values, but this server holds at "
            f"most {budget}; shorten the prompt or lower max_tokens (or restart the server with "
            "a larger --kv-memory / --max-kv-tokens)",
            "prompt",
            "kv_memory_exceeded",
        )
    return prompt


def sampling(service, body, max_tokens: int) -> SamplingOptions:
    """The decoder's options for a request (logit_bias checked against the vocabulary)."""
    for token, _ in body.biases:
        if token >= service.vocab_size:
            raise APIError(
                400, f"logit_bias: token id {token} is not in the vocabulary", "logit_bias"
            )
    return SamplingOptions(
        max_new_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stops,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.biases,
    )


def submit(
    service, adapter: Adapter, prompts: list[Prompt], body, options: SamplingOptions, logprobs
):
    """Queue one job per prompt and choice; all or none (429 when the queue is full). A seeded
    choice samples what `generate` samples for its text, seed and sample number (the choice's
    index). `logprobs`: (alternatives per token, or None for no log-probabilities; whether to
    echo the prompt's)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    top, echo = logprobs
    jobs = []
    for p, prompt in enumerate(prompts):
        for c in range(body.n):
            index = p * body.n + c
            seed = None if body.seed is None else row_seeds(body.seed, [prompt.text], [c])[0]

            def emit(event, index=index):
                loop.call_soon_threadsafe(events.put_nowait, (index, event))

            job = Job(adapter.steering, prompt.ids, options, emit, adapter.name, seed, top, echo)
            jobs.append(job)
    try:
        for job in jobs:
            service.engine.submit(job)
    except QueueFull:
        for job in jobs:
            job.cancelled.set()
        raise busy() from None
    return jobs, events


async def collect(jobs: list[Job], events: asyncio.Queue, request: Request) -> list[Finished]:
    """Wait for every job's result; a client that goes away cancels them (their rows leave)."""
    results: dict[int, Finished] = {}
    try:
        while len(results) < len(jobs):
            try:
                index, event = await asyncio.wait_for(events.get(), timeout=0.25)
            except TimeoutError:
                if await request.is_disconnected():
                    raise asyncio.CancelledError from None
                continue
            if isinstance(event, Failed):
                raise APIError(500, f"generation failed: {event.error}")
            if isinstance(event, Finished):
                results[index] = event
    finally:
        if len(results) < len(jobs):
            for job in jobs:
                job.cancelled.set()
    return [results[i] for i in range(len(jobs))]


def usage(results: list[Finished], prompts: list[Prompt]) -> dict:
    prompt_tokens = sum(len(p.ids) for p in prompts)
    completion = sum(r.completion_tokens for r in results)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


async def stream(jobs, events, reply: Reply, prompts: list[Prompt], tokenizer, with_usage: bool):
    """Server-sent events as OpenAI streams them: an echoing choice's prompt first, one chunk
    per text delta (with its tokens' log-probabilities when asked), a last chunk per choice
    with its finish reason, optionally the usage, then `data: [DONE]`. A client that goes
    away cancels."""
    per_prompt = len(jobs) // len(prompts)
    started, results = set(), {}
    offsets = [
        TokenOffsets(tokenizer, p.ids, len(p.text) if reply.echo else 0)
        for p in prompts
        for _ in range(per_prompt)
    ]
    try:
        while len(results) < len(jobs):
            index, event = await events.get()
            if isinstance(event, Failed):
                yield sse(_stream_error(event.error))
                return
            prompt = prompts[index // per_prompt]
            if isinstance(event, Started) and reply.echo and index not in started:
                started.add(index)
                scores = event.prompt_logprobs
                yield sse(reply.echo_chunk(index, prompt.text, scores, tokenizer))
            if isinstance(event, Delta):
                tokens, at = event.tokens, offsets[index]
                yield sse(reply.chunk(index, event.text, None, tokens, tokenizer, at))
            elif isinstance(event, Finished):
                results[index] = event
                yield sse(reply.chunk(index, "", event.finish_reason, (), tokenizer))
        if with_usage:
            yield sse(reply.usage_chunk(usage(list(results.values()), prompts)))
        yield sse("[DONE]")
    finally:
        for job in jobs:
            job.cancelled.set()


def _stream_error(payload) -> dict:
    return {
        "error": {
            "message": f"generation failed: {payload}",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


def add_routes(app: FastAPI, service) -> None:
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        adapter = await service.adapter(body.model)
        request.state.adapter = adapter.name
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        if max_tokens == 0 and not body.echo:
            raise APIError(
                400,
                "max_tokens: 0 generates nothing; add echo: true to score the prompt",
                "max_tokens",
            )
        prompts = [encode(service, p, adapter, max_tokens) for p in body.prompts]
        options = sampling(service, body, max_tokens)
        reply = _reply("text", adapter, body.logprobs is not None, body.echo)
        jobs = submit(service, adapter, prompts, body, options, (body.logprobs, body.echo))
        return await _respond(service, jobs, prompts, body, reply, request)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        adapter = await service.adapter(body.model)
        request.state.adapter = adapter.name
        max_tokens = body.max_completion_tokens or body.max_tokens or 256
        text = _chat_text(service, [{"role": m.role, "content": m.text} for m in body.messages])
        prompts = [encode(service, text, adapter, max_tokens, special=False)]
        options = sampling(service, body, max_tokens)
        top = (body.top_logprobs or 0) if body.logprobs else None
        reply = _reply("chat", adapter, body.logprobs, False)
        jobs = submit(service, adapter, prompts, body, options, (top, False))
        return await _respond(service, jobs, prompts, body, reply, request)


def _reply(kind: str, adapter: Adapter, logprobs: bool, echo: bool) -> Reply:
    prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
    ident = prefix + uuid.uuid4().hex[:24]
    return Reply(kind, ident, int(time.time()), adapter.name, logprobs, echo)


async def _respond(service, submitted, prompts: list[Prompt], body, reply: Reply, request):
    jobs, events = submitted
    tokenizer = service.backbone.tokenizer
    if body.stream:
        events_out = stream(jobs, events, reply, prompts, tokenizer, body.include_usage)
        return StreamingResponse(events_out, media_type="text/event-stream")
    results = await collect(jobs, events, request)
    choices = []
    for i, result in enumerate(results):
        prompt = prompts[i // body.n]
        choices.append(reply.choice(i, result, tokenizer, prompt.text, prompt.ids))
    return reply.body(choices, usage(results, prompts))


def _chat_text(service, messages: list[dict]) -> str:
    tokenizer = service.backbone.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(
            400,
            f"model {service.base_name} has no chat template; use /v1/completions",
            "messages",
            "no_chat_template",
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
