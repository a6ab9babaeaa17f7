"""The decoder's loop (continuous batching) on one frozen model: rows steered by different
soft prompts, prefixes or nothing decode together, one token per step for every running row.
`generate` runs it on the caller's thread with every row joining at the first step
(`run_jobs`); `softprompt serve` runs it on its own thread with rows joining and leaving.

A new request joins at the next step: that step's one forward carries a token for each
running row and the whole prompt of each joining request (its prefill), packed into one
sequence; `decoding.rows.RowCache` gives every request attention to its own columns only, so
its output is what it gives alone. A row leaves as soon as it finishes. All model work runs on
the engine's one thread; callers talk to it through a bounded queue. Each row picks its tokens
from its own seeded `RowSampler`, all rows in one batched pass (`decoding.sampler`), and keeps
its text in a `RowText` that decodes only its new tokens (`decoding.text`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from softprompt.decoding.logprobs import TokenLogprob, token_logprobs
from softprompt.decoding.options import SamplingOptions
from softprompt.decoding.rows import Joining, RowCache
from softprompt.decoding.sampler import RowSampler, sample_rows
from softprompt.decoding.text import RowText
from softprompt.errors import ModelError
from softprompt.kernels.attention import use_segment_attention
from softprompt.models import Backbone
from softprompt.steering.base import Steering


class QueueFull(Exception):
    """The engine's queue is full: the caller should retry later."""


@dataclass(frozen=True)
class Delta:
    """Text that became final, and the log-probabilities of the tokens that made it (when the
    job asked for them)."""

    text: str
    tokens: tuple[TokenLogprob, ...] = ()


@dataclass
class Job:
    """One generation: the prompt's token ids under a steering, how it is decoded (`seed`: its
    row's generator seed, see `row_seeds`; None: a random one), and where events go.
    `logprobs`: report each generated token's log-probability and this many alternatives
    (None: none); `echo`: also the prompt tokens' (the first one has none).

    `emit(kind, payload)` is called from the engine thread: ("delta", Delta) as text becomes
    final, then ("done", {"finish_reason", "prompt_tokens", "completion_tokens", "text",
    "tokens", "prompt_logprobs"}), or ("error", exception)."""

    steering: Steering
    prompt_ids: list[int]
    options: SamplingOptions
    emit: Callable[[str, object], None]
    adapter: str = ""
    seed: int | None = None
    logprobs: int | None = None
    echo: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    sampler: RowSampler | None = None  # made when the row joins
    text: RowText | None = None
    scored: list[TokenLogprob] = field(default_factory=list)  # every generated token's
    unsent: int = 0  # scored tokens not yet in a delta
    prompt_scores: list[TokenLogprob] | None = None


@dataclass
class Call:
    """Any other model work (classification): run on the engine thread between steps, one
    call between two steps (so a caller with much work sends it in bounded slices)."""

    run: Callable[[], object]
    done: Callable[[object, BaseException | None], None]


class Engine:
    """The model loop. `submit` from any thread; `start`/`stop` the loop thread."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        max_batch: int = 16,
        queue_size: int = 64,
        on_step: Callable[[int, int], None] | None = None,
    ) -> None:
        if not backbone.segment_attention and not use_segment_attention(backbone.model):
            raise ModelError(
                f"model {backbone.name} cannot be served: its attention does not go through "
                "transformers' AttentionInterface (sdpa), which the engine's row attention needs"
            )
        if getattr(backbone.model.config, "attn_logit_softcapping", None):
            raise ModelError(
                f"model {backbone.name} soft-caps its attention logits, which the serving "
                "engine's row attention does not compute; serve a model without it"
            )
        self.backbone = backbone
        self.max_batch = max_batch
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.on_step = on_step or (lambda batch, tokens: None)
        self.rows: list[Job] = []
        self.joining: list[Job] = []
        self.cache = RowCache(backbone.model, max_batch, backbone.dtype, backbone.device)
        self.last = torch.zeros((0,), dtype=torch.long)
        self.eos = _eos_ids(backbone)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the caller's side -----------------------------------------------------------------

    def submit(self, work: Job | Call) -> None:
        """Queue a job or a call; QueueFull when the queue is at its bound."""
        try:
            self.queue.put_nowait(work)
        except queue.Full as exc:
            raise QueueFull from exc

    @property
    def pending(self) -> int:
        return self.queue.qsize()

    @property
    def running(self) -> int:
        return len(self.rows)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="softprompt-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is running and queued (up to `timeout`), then end the loop."""
        deadline = time.monotonic() + timeout
        while (self.rows or self.joining or not self.queue.empty()) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def run_jobs(self, jobs: list[Job]) -> None:
        """Decode `jobs` on the calling thread (not while the loop thread runs): they all join
        at the first step; returns when the last one is done."""
        if self._thread is not None:
            raise RuntimeError("run_jobs runs the engine on the caller's thread; stop it first")
        if len(jobs) > self.max_batch:
            raise ValueError(f"{len(jobs)} jobs do not fit a batch of {self.max_batch}")
        self.joining.extend(job for job in jobs if not job.cancelled.is_set())
        with torch.no_grad():
            while self.rows or self.joining:
                self._step()

    # --- the engine thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._admit()
            if not self.rows and not self.joining:
                self._wait_for_work()
                continue
            with torch.no_grad():
                self._step()

    def _wait_for_work(self) -> None:
        try:
            work = self.queue.get(timeout=0.05)
        except queue.Empty:
            return
        self._take(work)

    def _admit(self) -> None:
        while len(self.rows) + len(self.joining) < self.max_batch:
            try:
                work = self.queue.get_nowait()
            except queue.Empty:
                return
            self._take(work)
            if isinstance(work, Call):
                return  # one call between two steps: running rows wait for one call at most

    def _take(self, work: Job | Call) -> None:
        if isinstance(work, Call):
            try:
                result = work.run()
            except Exception as exc:  # reported to the caller, the loop goes on
                work.done(None, exc)
            else:
                work.done(result, None)
            return
        if not work.cancelled.is_set():
            self.joining.append(work)

    def _step(self) -> None:
        """One forward: a new token for every running row, and the whole prompt of every
        request that joins now (its prefill); then each of them picks its next token."""
        joining, self.joining = self.joining, []
        inputs = [self._joining_inputs(job) for job in joining]
        ready = [(job, made) for job, made in zip(joining, inputs) if made is not None]
        if not self.rows and not ready:
            return
        embeds = [self.backbone.embed(self.last[None])] if self.rows else []
        embeds += [made[0] for _, made in ready]
        ends = torch.tensor([made[1].tokens for _, made in ready], dtype=torch.long)
        read = torch.cat([torch.arange(len(self.rows)), len(self.rows) + ends.cumsum(0) - 1])
        echoed = _echo_positions(ready, len(self.rows))
        read = torch.cat([read, *(positions for _, positions in echoed)])
        device = self.backbone.device
        try:  # the store may need to grow (memory), the model may fail: not the loop's end
            positions = self.cache.begin([made[1] for _, made in ready])
            out = self.backbone.model(
                inputs_embeds=torch.cat(embeds, dim=1),
                position_ids=positions.to(device)[None],
                attention_mask=torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device),
                use_cache=False,
                logits_to_keep=read.to(device),
                row_cache=self.cache,
            )
        except Exception as exc:  # the step's rows fail together; the engine goes on
            self._fail_all([*self.rows, *(job for job, _ in ready)], exc)
            return
        self.cache.end()
        for job, _ in ready:
            job.sampler = RowSampler(job.options, job.seed, device)
            job.text = RowText(self.backbone.tokenizer, job.options.stop, job.prompt_ids)
        self.rows += [job for job, _ in ready]
        self.last = torch.cat(
            [self.last.to(device), torch.zeros(len(ready), dtype=torch.long, device=device)]
        )
        self.on_step(len(self.rows), len(self.rows))
        logits = out.logits[0]
        self._score_prompts(echoed, logits[len(self.rows) :])
        self._advance(list(range(len(self.rows))), logits[: len(self.rows)])

    def _score_prompts(self, echoed: list[tuple[Job, torch.Tensor]], logits: torch.Tensor):
        """The echoed prompts' token log-probabilities, from their positions' logits."""
        start = 0
        for job, positions in echoed:
            rows = logits[start : start + len(positions)]
            start += len(positions)
            top = job.logprobs or 0
            scores = token_logprobs(rows, job.prompt_ids[1:], top) if len(rows) else []
            job.prompt_scores = [TokenLogprob(job.prompt_ids[0], None), *scores]

    def _joining_inputs(self, job: Job) -> tuple[torch.Tensor, Joining] | None:
        """A joining request's input embeddings [1, P, d] (soft prompt, then prompt) and its
        cached prefix; None (the job told why) when its steering cannot run on this model."""
        backbone, device = self.backbone, self.backbone.device
        try:
            parts = job.steering.parts()
            embeds = backbone.embed(torch.tensor([job.prompt_ids], device=device))
            if parts.embeddings is not None:
                soft = parts.embeddings.to(device=device, dtype=embeds.dtype)[None]
                embeds = torch.cat([soft, embeds], dim=1)
            keys = values = None
            if parts.keys is not None:
                keys = parts.keys.to(device=device, dtype=embeds.dtype)
                values = parts.values.to(device=device, dtype=embeds.dtype)
            return embeds, Joining(keys, values, int(embeds.shape[1]))
        except Exception as exc:  # a request that cannot run fails alone
            job.emit("error", exc)
            return None

    def _fail_all(self, jobs: list[Job], exc: Exception) -> None:
        for job in jobs:
            job.emit("error", exc)
        self.rows = []
        self.cache.keep([])
        self.last = self.last[:0]

    def _advance(self, indices: list[int], logits: torch.Tensor) -> None:
        """Pick every row's next token (one batched pass), emit what became final, drop
        finished rows."""
        finished = []
        picking = [n for n, index in enumerate(indices) if self.rows[index].options.max_new_tokens]
        chosen = logits if len(picking) == len(indices) else logits[picking]
        tokens = sample_rows([self.rows[indices[n]].sampler for n in picking], chosen)
        if picking:
            at = [indices[n] for n in picking]
            self.last[at] = torch.tensor(tokens, dtype=torch.long, device=self.last.device)
        picked = dict(zip(picking, tokens))
        for n, (row, index) in enumerate(zip(logits, indices)):
            job = self.rows[index]
            if n not in picked:  # max_new_tokens 0: only the prompt's log-probabilities
                finished.append(index)
                self._finish(job, "length")
                continue
            token = picked[n]
            if job.logprobs is not None and token not in self.eos:
                job.scored += token_logprobs(row[None], [token], job.logprobs)
            reason = self._record(job, token)
            if reason is not None or job.cancelled.is_set():
                finished.append(index)
                if reason is not None:
                    self._finish(job, reason)
        if finished:
            self._drop(finished)

    def _record(self, job: Job, token: int) -> str | None:
        """Add the token to the job; returns its finish reason when it is done."""
        if token in self.eos:
            return "stop"
        if job.text.add(token):
            return "stop"
        if len(job.text.tokens) >= job.options.max_new_tokens:
            return "length"
        piece = job.text.take_final()
        if piece:
            job.emit("delta", self._delta(job, piece))
        return None

    def _delta(self, job: Job, piece: str) -> Delta:
        """The piece of text, with the log-probabilities of the tokens not yet sent."""
        tokens, job.unsent = tuple(job.scored[job.unsent :]), len(job.scored)
        return Delta(piece, tokens)

    def _finish(self, job: Job, reason: str) -> None:
        piece = job.text.take_final(finished=True)
        if piece or job.unsent < len(job.scored):
            job.emit("delta", self._delta(job, piece))
        job.emit(
            "done",
            {
                "finish_reason": reason,
                "text": job.text.text,
                "prompt_tokens": len(job.prompt_ids),
                "completion_tokens": len(job.text.tokens),
                "tokens": job.scored if job.logprobs is not None else None,
                "prompt_logprobs": job.prompt_scores,
            },
        )

    def _drop(self, indices: list[int]) -> None:
        """Remove finished rows; the cache keeps the others' columns in their new order."""
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        self.rows = [self.rows[i] for i in keep]
        self.cache.keep(keep)
        self.last = self.last[torch.tensor(keep, dtype=torch.long, device=self.last.device)]


def _echo_positions(ready: list, running: int) -> list[tuple[Job, torch.Tensor]]:
    """For each joining job that echoes its prompt's log-probabilities: the positions, in the
    step's packed sequence, whose logits predict its prompt tokens after the first."""
    echoed, start = [], running
    for job, made in ready:
        if job.echo:
            soft = made[1].tokens - len(job.prompt_ids)  # soft-prompt embeddings in front
            first = start + soft
            echoed.append((job, torch.arange(first, first + len(job.prompt_ids) - 1)))
        start += made[1].tokens
    return echoed


def _eos_ids(backbone: Backbone) -> set[int]:
    ids = getattr(backbone.model.generation_config, "eos_token_id", None)
    if ids is None:
        ids = backbone.tokenizer.eos_token_id
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, list) else {int(ids)}
