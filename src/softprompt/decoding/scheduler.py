"""The engine's scheduler: the one place that decides what each step does, and the one list of
running rows (`Scheduler.rows`, in the order they joined).

A request becomes a `Row` when it joins: the job stays as submitted; the row holds what
decoding changes (its blocks, how much of its input is fed, its sampler and text). Each step
is a `StepPlan`: one new token for every decoding row, and a chunk of the input (soft prompt,
then prompt) of rows still prefilling — at most `prefill_chunk` input tokens in all per step
(None: every joining input whole), so a long prompt joins over several steps while the others
keep decoding. A request joins only when the pool can promise the blocks it may ever need; it
waits in line otherwise (`decoding.blocks`).
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from dataclasses import dataclass, field

import torch

from softprompt.decoding.blocks import BlockPool, Prefixes, SharedPrefix
from softprompt.decoding.events import Failed
from softprompt.decoding.logprobs import TokenLogprob
from softprompt.decoding.request import Job
from softprompt.decoding.sampler import RowSampler
from softprompt.decoding.text import RowText
from softprompt.errors import UsageError
from softprompt.models import Backbone


@dataclass(eq=False)
class Row:
    """A request while it runs. Its columns: the prefix (`cached`), then its inputs as fed,
    then its generated tokens; `table` lists the blocks they are in (shared prefix blocks
    first)."""

    job: Job
    inputs: torch.Tensor  # [P, d]: the soft prompt's embeddings, then the prompt's
    soft: int  # soft-prompt embeddings in front of the prompt
    cached: int  # prefix columns before the inputs
    prefix: SharedPrefix | None
    table: list[int]
    promised: int  # blocks reserved for it and not yet allocated
    sampler: RowSampler
    text: RowText
    length: int = 0  # columns filled
    fed: int = 0  # inputs fed
    last: int = 0  # the token it feeds next
    scored: list[TokenLogprob] = field(default_factory=list)
    unsent: int = 0  # scored tokens not yet in a delta
    prompt_scores: list[TokenLogprob] | None = None
    capture: bool = False  # keep its soft prompt's keys/values for its adapter once fed
    size: int = 0  # len(inputs)

    def __post_init__(self) -> None:
        self.size = len(self.inputs)

    @property
    def prefilling(self) -> bool:
        return self.fed < self.size

    @property
    def own_blocks(self) -> list[int]:
        return self.table[len(self.prefix.blocks) if self.prefix else 0 :]


@dataclass(frozen=True)
class Chunk:
    """`count` inputs of a prefilling row from input `start` on, at `at` in the packed step."""

    row: Row
    start: int
    count: int
    at: int

    @property
    def final(self) -> bool:
        return self.start + self.count == self.row.size


@dataclass(frozen=True)
class Echo:
    """Read positions of a chunk whose logits predict prompt tokens `targets`."""

    row: Row
    targets: list[int]


@dataclass(frozen=True)
class StepPlan:
    """One step: the packed sequence is `decode`'s tokens (one each) then `chunks`' inputs.
    `positions`: each packed token's position; `read`: the packed indices whose logits are
    read — first one per row in `sampled` (decoding rows, then rows whose prefill ends here),
    then the echoed prompts' (`echoes`, in order)."""

    decode: list[Row]
    chunks: list[Chunk]
    positions: torch.Tensor
    read: torch.Tensor
    sampled: list[Row]
    echoes: list[Echo]

    @property
    def rows(self) -> list[Row]:
        return [*self.decode, *(c.row for c in self.chunks)]

    @property
    def tokens(self) -> int:
        return len(self.decode) + sum(c.count for c in self.chunks)


class Scheduler:
    """Who waits, who runs, and each step's plan."""

    def __init__(
        self,
        backbone: Backbone,
        pool: BlockPool,
        max_batch: int,
        prefill_chunk: int | None = None,
    ) -> None:
        if prefill_chunk is not None and prefill_chunk < 1:
            raise UsageError(f"--prefill-chunk {prefill_chunk}: give at least 1 token")
        self.backbone, self.pool, self.max_batch = backbone, pool, max_batch
        self.prefill_chunk = prefill_chunk
        self.prefixes = Prefixes(pool)
        self.waiting: deque[Job] = deque()
        self.rows: list[Row] = []

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def schedule(self) -> StepPlan | None:
        """Let cancelled rows leave, let waiting requests join while they fit, and plan the
        step (None: nothing to run)."""
        for row in [r for r in self.rows if r.job.cancelled.is_set()]:
            self.leave(row)
        self._join_waiting()
        decode = [r for r in self.rows if not r.prefilling]
        chunks, at = [], len(decode)
        budget = math.inf if self.prefill_chunk is None else self.prefill_chunk
        for row in (r for r in self.rows if r.prefilling):
            count = int(min(row.size - row.fed, budget))
            if count <= 0:
                break
            chunks.append(Chunk(row, row.fed, count, at))
            at, budget = at + count, budget - count
        if not decode and not chunks:
            return None
        for row in decode:
            self._cover(row, row.length + 1)
        for chunk in chunks:
            self._cover(chunk.row, chunk.row.length + chunk.count)
        return _plan(decode, chunks)

    def ran(self, plan: StepPlan) -> None:
        """The step ran: its rows' columns now hold what they fed."""
        for row in plan.decode:
            row.length += 1
        for chunk in plan.chunks:
            row = chunk.row
            row.length += chunk.count
            row.fed += chunk.count
            if row.capture and row.fed >= row.soft:
                row.capture = False
                self._hold_soft_prompt(row)

    def _hold_soft_prompt(self, row: Row) -> None:
        """The soft prompt's keys/values, now computed in the row's first columns, kept once
        for its adapter (when the pool has room): later rows start after them."""
        if self.pool.available() < self.pool.blocks_for(row.soft):
            return
        keys, values = self.pool.read(row.table, 0, row.soft)
        self.prefixes.store(row.job.steering, keys, values)

    def leave(self, row: Row) -> None:
        """The row is done (or cancelled, or failed): its blocks and promise go back."""
        self.rows.remove(row)
        self.pool.reserved -= row.promised
        if row.prefix is not None:
            self.prefixes.leave(row.prefix, row.table[: len(row.prefix.blocks)])
        self.pool.release(row.own_blocks)

    # --- joining ---------------------------------------------------------------------------

    def _join_waiting(self) -> None:
        while self.waiting and len(self.rows) < self.max_batch:
            job = self.waiting[0]
            if job.cancelled.is_set():
                self.waiting.popleft()
                continue
            try:
                row = self._join(job)
            except Exception as exc:  # a request that cannot run fails alone
                self.waiting.popleft()
                job.emit(Failed(exc))
                continue
            if row is None:  # waits for memory
                return
            self.waiting.popleft()
            self.rows.append(row)

    def _join(self, job: Job) -> Row | None:
        """The job's row, its prefix written and its blocks promised; None when the pool
        cannot promise them yet."""
        backbone, device = self.backbone, self.backbone.device
        parts = job.steering.parts()
        shared = self._shares(job)
        only_soft = parts.embeddings is not None and parts.keys is None
        held = self.prefixes.held(job.steering) if shared and only_soft else None
        inputs = backbone.embed(torch.tensor([job.prompt_ids], device=device))[0]
        soft = 0
        if parts.embeddings is not None and held is None:
            soft = int(parts.embeddings.shape[0])
            inputs = torch.cat([parts.embeddings.to(device=device, dtype=inputs.dtype), inputs])
        cached = parts.cache_length if held is None else held.length
        whole = cached // self.pool.block_size if shared else 0
        total = cached + len(inputs) + job.options.max_new_tokens
        own = self.pool.blocks_for(total) - whole
        needed = own + (self.prefixes.cost(job.steering, cached) if shared else 0)
        if needed > self.pool.available():
            self.prefixes.sweep(needed)
        if needed > self.pool.available():
            if self.pool.max_blocks is not None and needed > self.pool.max_blocks:
                raise MemoryError(_too_long(total, self.pool))
            return None
        self.pool.reserved += own
        row = Row(
            job, inputs, soft, cached, None, [], own,
            RowSampler(job.options, job.seed, device),
            RowText(backbone.tokenizer, job.options.stop, job.prompt_ids),
        )  # fmt: skip
        if cached:
            self._write_prefix(row, parts.keys, parts.values, shared)
        row.length = cached
        row.capture = shared and only_soft and held is None
        return row

    def _shares(self, job: Job) -> bool:
        """Whether the job's prefix can be held once for its steering (its object can be
        referred to weakly)."""
        try:
            weakref.ref(job.steering)
        except TypeError:
            return False
        return True

    def _write_prefix(self, row: Row, keys, values, shared: bool) -> None:
        if shared:
            row.prefix = self.prefixes.take(row.job.steering, keys, values)
            row.table = list(row.prefix.blocks)
            start = len(row.table) * self.pool.block_size
            keys, values = row.prefix.tail_keys, row.prefix.tail_values
            if keys is None:
                return
        else:
            start = 0
        self._cover(row, start + int(keys.shape[-2]))
        self.pool.write(row.table, start, keys, values)

    def _cover(self, row: Row, columns: int) -> None:
        """Allocate the row's blocks up to `columns` columns, from its promise."""
        more = self.pool.blocks_for(columns) - len(row.table)
        if more > 0:
            row.table += self.pool.allocate(more)
            taken = min(more, row.promised)
            row.promised -= taken
            self.pool.reserved -= taken


def _plan(decode: list[Row], chunks: list[Chunk]) -> StepPlan:
    positions = [torch.tensor([r.length for r in decode], dtype=torch.long)]
    positions += [torch.arange(c.row.length, c.row.length + c.count) for c in chunks]
    finals = [c for c in chunks if c.final]
    read = [torch.arange(len(decode))]
    read.append(torch.tensor([c.at + c.count - 1 for c in finals], dtype=torch.long))
    echoes = []
    for chunk in chunks:
        row = chunk.row
        if not row.job.echo:
            continue
        # input i (soft <= i < soft + n - 1) predicts prompt token i - soft + 1
        low = max(chunk.start, row.soft)
        high = min(chunk.start + chunk.count, row.soft + len(row.job.prompt_ids) - 1)
        if high <= low:
            continue
        targets = row.job.prompt_ids[low - row.soft + 1 : high - row.soft + 1]
        read.append(torch.arange(chunk.at + low - chunk.start, chunk.at + high - chunk.start))
        echoes.append(Echo(row, list(targets)))
    sampled = [*decode, *(c.row for c in finals)]
    return StepPlan(decode, chunks, torch.cat(positions), torch.cat(read), sampled, echoes)


def _too_long(tokens: int, pool: BlockPool) -> str:
    return (
        f"the request needs up to {tokens} tokens of KV memory, but the server holds at most "
        f"{pool.max_blocks * pool.block_size}; shorten the prompt or max_tokens, or raise "
        "--max-kv-tokens / --kv-memory"
    )
