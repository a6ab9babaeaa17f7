"""The decoder's loop (continuous batching) on one frozen model: rows steered by different
soft prompts, prefixes or nothing decode together, one token per step for every running row.
`generate` runs it on the caller's thread with every row joining at the first step
(`run_jobs`); `softprompt serve` runs it on its own thread with rows joining and leaving.

Each step is schedule -> execute -> update, each its own module: the scheduler
(`decoding.scheduler`) alone decides what the step does (`StepPlan`: which rows decode, which
join and which chunk of their prompt they feed, positions and read indices) and holds the one
list of running rows; the executor (`decoding.executor`) runs the plan as one packed forward in
which every row attends to its own KV blocks (`decoding.blocks`, `decoding.rows`), so its
output is what it gives alone; the update (`decoding.update`) picks every sampled row's token
in one batched pass, each row from its own seeded `RowSampler` (`decoding.sampler`), decodes
only the new tokens of each row's `RowText` (`decoding.text`) and sends typed events
(`decoding.events`). All model work runs on the engine's one thread; callers talk to it
through a bounded queue; at most one `Call` (other model work) runs between two steps.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import torch

from softprompt.decoding.blocks import BlockPool
from softprompt.decoding.events import Delta, Failed, Finished, Started
from softprompt.decoding.executor import execute
from softprompt.decoding.request import Call, Job
from softprompt.decoding.scheduler import Row, Scheduler
from softprompt.decoding.update import update
from softprompt.errors import ModelError
from softprompt.kernels.attention import use_segment_attention
from softprompt.models import Backbone

__all__ = ["Call", "Delta", "Engine", "Failed", "Finished", "Job", "QueueFull", "Started"]


class QueueFull(Exception):
    """The engine's queue is full: the caller should retry later."""


class Engine:
    """The model loop. `submit` from any thread; `start`/`stop` the loop thread."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        max_batch: int = 16,
        queue_size: int = 64,
        on_step: Callable[[int, int], None] | None = None,
        max_kv_tokens: int | None = None,
        prefill_chunk: int | None = None,
    ) -> None:
        """`max_kv_tokens`: the KV memory budget in tokens (None: unbounded); `prefill_chunk`:
        the most prompt tokens fed per step (None: a joining prompt whole)."""
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
        self.pool = BlockPool(backbone.model, backbone.dtype, backbone.device)
        if max_kv_tokens is not None:
            self.pool.set_budget(tokens=max_kv_tokens)
        self.scheduler = Scheduler(backbone, self.pool, max_batch, prefill_chunk)
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
        return len(self.scheduler.rows)

    @property
    def rows(self) -> list[Row]:
        """The running rows, in order (the scheduler's list)."""
        return self.scheduler.rows

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="softprompt-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is running and queued (up to `timeout`), then end the loop."""
        deadline = time.monotonic() + timeout
        while (self.scheduler.busy or not self.queue.empty()) and (time.monotonic() < deadline):
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
        self.scheduler.waiting.extend(jobs)
        with torch.no_grad():
            while self.scheduler.busy:
                self._step()

    # --- the engine thread -----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._admit()
            if not self.scheduler.busy:
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
        scheduler = self.scheduler
        while len(scheduler.rows) + len(scheduler.waiting) < self.max_batch:
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
            self.scheduler.waiting.append(work)

    def _step(self) -> None:
        """One step: schedule, execute, update; rows that are done leave."""
        plan = self.scheduler.schedule()
        if plan is None:
            return
        try:  # the model may fail (memory): the step's rows fail, not the loop
            logits = execute(self.backbone, self.pool, plan)
        except Exception as exc:
            for row in plan.rows:
                row.job.emit(Failed(exc))
                self.scheduler.leave(row)
            return
        self.scheduler.ran(plan)
        self.on_step(len(self.scheduler.rows), len(plan.sampled))  # rows, new tokens
        for row in update(plan, logits, self.eos):
            self.scheduler.leave(row)


def _eos_ids(backbone: Backbone) -> set[int]:
    ids = getattr(backbone.model.generation_config, "eos_token_id", None)
    if ids is None:
        ids = backbone.tokenizer.eos_token_id
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, list) else {int(ids)}
