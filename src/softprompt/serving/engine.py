"""Continuous batching on one frozen model: requests steered by different soft prompts,
prefixes or nothing decode together, one token per step for every running row.

A new request is prefilled alone (so its cache is exactly what it would be alone), then joins
the running batch between two decoding steps: its cache rows are left-padded to the batch's
width under a 0 mask, and its positions go on counting from its own first real position. A row
leaves as soon as it finishes; the batch's cache loses its row and any all-padding columns.
All model work runs on the engine's one thread; callers talk to it through a bounded queue.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from softprompt.models.backbone import Backbone
from softprompt.steering.base import Steering


class QueueFull(Exception):
    """The engine's queue is full: the caller should retry later."""


@dataclass(frozen=True)
class Sampling:
    """How one choice is decoded: greedy at temperature 0, else sampled (top-p, seeded)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Job:
    """One generation: the prompt's token ids under a steering, and where events go.

    `emit(kind, payload)` is called from the engine thread: ("delta", text) as text becomes
    final, then ("done", {"finish_reason", "prompt_tokens", "completion_tokens", "text"})."""

    steering: Steering
    prompt_ids: list[int]
    sampling: Sampling
    emit: Callable[[str, object], None]
    adapter: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already emitted
    final_text: str | None = None  # set when a stop sequence cut the text
    generator: torch.Generator | None = None


@dataclass
class Call:
    """Any other model work (classification): run on the engine thread between steps."""

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
        self.backbone = backbone
        self.max_batch = max_batch
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.on_step = on_step or (lambda batch, tokens: None)
        self.rows: list[Job] = []
        self.cache = DynamicCache()  # per layer [rows, kv_heads, width, head_dim]
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.positions = torch.zeros((0,), dtype=torch.long)
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
        while (self.rows or not self.queue.empty()) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- the engine thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._admit()
            if not self.rows:
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
        while len(self.rows) < self.max_batch:
            try:
                work = self.queue.get_nowait()
            except queue.Empty:
                return
            self._take(work)

    def _take(self, work: Job | Call) -> None:
        if isinstance(work, Call):
            try:
                result = work.run()
            except Exception as exc:  # reported to the caller, the loop goes on
                work.done(None, exc)
            else:
                work.done(result, None)
            return
        if work.cancelled.is_set():
            return
        try:
            with torch.no_grad():
                self._prefill(work)
        except Exception as exc:  # a request that cannot run fails alone
            work.emit("error", exc)

    def _prefill(self, job: Job) -> None:
        """Run the job's steering and prompt alone; its cache and first token join the batch."""
        backbone, device = self.backbone, self.backbone.device
        parts = job.steering.parts()
        ids = torch.tensor([job.prompt_ids], device=device)
        embeds = backbone.embed(ids)
        if parts.embeddings is not None:
            soft = parts.embeddings.to(device=device, dtype=embeds.dtype)[None]
            embeds = torch.cat([soft, embeds], dim=1)
        cache = DynamicCache()
        for layer in range(len(parts.keys) if parts.keys is not None else 0):
            keys = parts.keys[layer][None].to(device=device, dtype=embeds.dtype)
            values = parts.values[layer][None].to(device=device, dtype=embeds.dtype)
            cache.update(keys, values, layer)
        width = parts.cache_length + embeds.shape[1]
        out = backbone.model(
            inputs_embeds=embeds,
            attention_mask=torch.ones((1, width), dtype=torch.long, device=device),
            position_ids=torch.arange(parts.cache_length, width, device=device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if job.sampling.seed is not None:
            job.generator = torch.Generator(device=device).manual_seed(job.sampling.seed)
        self._join(job, cache, width)
        self._advance([len(self.rows) - 1], out.logits[:, -1])

    def _join(self, job: Job, cache: DynamicCache, width: int) -> None:
        """Add a prefilled row: pad the batch's cache and the row's to one width."""
        device = self.backbone.device
        row_mask = torch.ones((1, width), dtype=torch.long, device=device)
        if not self.rows:
            self.cache, self.mask = cache, row_mask
        else:
            total = max(width, self.mask.shape[1])
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = _cat_left(mine.keys, theirs.keys, total)
                mine.values = _cat_left(mine.values, theirs.values, total)
            self.mask = _cat_left(self.mask, row_mask, total)
        self.rows.append(job)
        position = torch.tensor([width], device=device)
        self.positions = torch.cat([self.positions.to(device), position])
        self.last = torch.cat([self.last.to(device), torch.zeros_like(position)])

    def _step(self) -> None:
        """One decoding step for every running row."""
        ones = torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        out = self.backbone.model(
            input_ids=self.last[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.positions = self.positions + 1
        self.on_step(len(self.rows), len(self.rows))
        self._advance(list(range(len(self.rows))), out.logits[:, -1])

    def _advance(self, indices: list[int], logits: torch.Tensor) -> None:
        """Pick each row's next token, emit what became final, drop finished rows."""
        finished = []
        for row, index in zip(logits, indices):
            job = self.rows[index]
            token = _pick(row.float(), job.sampling, job.generator)
            self.last[index] = token
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
        job.generated.append(token)
        text = self.backbone.tokenizer.decode(job.generated, skip_special_tokens=True)
        cut = _first_stop(text, job.sampling.stop)
        if cut is not None:
            job.final_text = text[:cut]
            return "stop"
        if len(job.generated) >= job.sampling.max_tokens:
            return "length"
        hold = max((len(s) for s in job.sampling.stop), default=1) - 1
        final = len(text) - hold
        while final > job.sent and text[final - 1] == "\ufffd":  # an unfinished character
            final -= 1
        if final > job.sent:
            job.emit("delta", text[job.sent : final])
            job.sent = final
        return None

    def _finish(self, job: Job, reason: str) -> None:
        text = job.final_text
        if text is None:
            text = self.backbone.tokenizer.decode(job.generated, skip_special_tokens=True)
        if len(text) > job.sent:
            job.emit("delta", text[job.sent :])
        job.emit(
            "done",
            {
                "finish_reason": reason,
                "text": text,
                "prompt_tokens": len(job.prompt_ids),
                "completion_tokens": len(job.generated),
            },
        )

    def _drop(self, indices: list[int]) -> None:
        """Remove finished rows, and the cache columns that every remaining row pads."""
        gone = set(indices)
        keep = [i for i in range(len(self.rows)) if i not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = DynamicCache()
            self.mask = self.mask[:0, :0]
            self.positions, self.last = self.positions[:0], self.last[:0]
            return
        rows = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[rows]
        start = int((mask.sum(0) > 0).nonzero()[0])
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[rows][:, :, start:]
            layer.values = layer.values[rows][:, :, start:]
        self.positions, self.last = self.positions[rows], self.last[rows]


def _cat_left(batch: torch.Tensor, row: torch.Tensor, width: int) -> torch.Tensor:
    """Stack `row` under `batch` along dim 0, both left-padded with zeros to `width` along
    their sequence dimension (the last but one for 4-d caches, the last for masks)."""
    dim = -2 if batch.ndim == 4 else -1
    return torch.cat([_pad_left(batch, width, dim), _pad_left(row, width, dim)], dim=0)


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _pick(logits: torch.Tensor, sampling: Sampling, generator) -> int:
    """Greedy at temperature 0; else a sample from the top-p nucleus at the temperature."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        outside = ordered.cumsum(0) - ordered > sampling.top_p
        ordered[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=generator))


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def _eos_ids(backbone: Backbone) -> set[int]:
    ids = getattr(backbone.model.generation_config, "eos_token_id", None)
    if ids is None:
        ids = backbone.tokenizer.eos_token_id
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, list) else {int(ids)}
