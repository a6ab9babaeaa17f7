"""The running rows' keys and values, and the attention of one mixed engine step.

A step feeds the model one packed sequence: one new token for each running row, then every
token of the requests that join at this step (their soft prompt and prompt). Each layer hands
its attention to `RowCache.attend`: the running rows attend, as one batch, to their own
columns of a preallocated [slots, kv_heads, capacity, head_dim] store; each joining request
attends causally to its prefix (written into its slot before the step) and its own tokens.
So a request's prefill costs its tokens inside a step the running rows take anyway, not a
forward of its own, and no step copies the cache: a row's column c holds position c.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.kernels.attention import masked_attention
from softprompt.steering.prefix import prefix_geometry

FIRST_CAPACITY = 128


@dataclass(frozen=True)
class Joining:
    """A request that joins at this step: its cached prefix ([layers, kv_heads, L, head_dim]
    keys and values, or None) and how many input tokens it feeds (soft prompt + prompt)."""

    keys: torch.Tensor | None
    values: torch.Tensor | None
    tokens: int

    @property
    def cached(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])


class RowCache:
    """Keys and values of up to `slots` rows; rows 0..rows-1 are running, in the engine's
    order. Grows its capacity (columns) by doubling; never shrinks while serving."""

    def __init__(self, model, slots: int, dtype: torch.dtype, device: torch.device) -> None:
        self.layers, self.heads, self.head_dim = prefix_geometry(model)
        self.slots, self.dtype, self.device = slots, dtype, device
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths = torch.zeros(slots, dtype=torch.long)  # filled columns per slot
        self.rows = 0
        self._step: _Step | None = None

    # --- a step ----------------------------------------------------------------------------

    def begin(self, joining: list[Joining]) -> torch.Tensor:
        """Lay out a step: the running rows' new tokens, then the joining requests'. Writes
        the joining prefixes into their slots; returns every fed token's position."""
        if self.rows + len(joining) > self.slots:
            raise ValueError(f"{self.rows + len(joining)} rows do not fit {self.slots} slots")
        starts = [j.cached for j in joining]
        needed = [int(self.lengths[: self.rows].max()) + 1] if self.rows else []
        needed += [s + j.tokens for s, j in zip(starts, joining)]
        self._ensure(max(needed))
        for offset, join in enumerate(joining):
            slot = self.rows + offset
            self.lengths[slot] = join.cached
            if join.keys is not None:
                for layer in range(self.layers):
                    self.keys[layer][slot, :, : join.cached] = join.keys[layer]
                    self.values[layer][slot, :, : join.cached] = join.values[layer]
        tokens = [j.tokens for j in joining]
        self._step = _Step.plan(self.lengths[: self.rows], starts, tokens, self.device)
        positions = [self.lengths[: self.rows]]
        positions += [torch.arange(s, s + j.tokens) for s, j in zip(starts, joining)]
        return torch.cat(positions)

    def end(self) -> None:
        """The step ran: every row's columns now include what it fed."""
        step, self._step = self._step, None
        self.lengths[: self.rows] += 1
        for offset, (start, tokens) in enumerate(zip(step.starts, step.tokens)):
            self.lengths[self.rows + offset] = start + tokens
        self.rows += len(step.tokens)

    def keep(self, rows: list[int]) -> None:
        """Keep these rows (in this order) as rows 0..n-1; the others leave."""
        if rows == list(range(len(rows))):
            self.rows = len(rows)
            return
        if rows:
            index = torch.tensor(rows, device=self.device)
            width = int(self.lengths[rows].max())
            for store in (*self.keys, *self.values):
                store[: len(rows), :, :width] = store.index_select(0, index)[:, :, :width]
            self.lengths[: len(rows)] = self.lengths[rows].clone()
        self.rows = len(rows)

    # --- the attention of one layer --------------------------------------------------------

    def attend(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """[1, H, T, D] queries and [1, H_kv, T, D] keys/values of the step's packed tokens in
        (rotary applied); their keys stored; [1, T, H, D] attention out."""
        step, keys, values = self._step, self.keys[layer], self.values[layer]
        outputs = []
        running = step.running
        if running:
            rows, columns, width = step.rows, step.columns, step.width
            keys[rows, :, columns] = key[0, :, :running].transpose(0, 1)
            values[rows, :, columns] = value[0, :, :running].transpose(0, 1)
            q = query[0, :, :running].transpose(0, 1)[:, :, None]  # [R, H, 1, D]
            mask = step.running_mask(sliding_window)
            out = masked_attention(
                q, keys[:running, :, :width], values[:running, :, :width], mask, scale
            )
            outputs.append(out[:, :, 0])  # [R, H, D]
        for offset, (start, tokens, at) in enumerate(zip(step.starts, step.tokens, step.at)):
            slot = running + offset
            keys[slot, :, start : start + tokens] = key[0, :, at : at + tokens]
            values[slot, :, start : start + tokens] = value[0, :, at : at + tokens]
            q = query[:, :, at : at + tokens]  # [1, H, P, D]
            mask = step.joining_mask(offset, sliding_window)
            k = keys[slot : slot + 1, :, : start + tokens]
            v = values[slot : slot + 1, :, : start + tokens]
            outputs.append(masked_attention(q, k, v, mask, scale)[0].transpose(0, 1))
        return torch.cat(outputs, dim=0)[None]

    # --- storage ---------------------------------------------------------------------------

    def _ensure(self, columns: int) -> None:
        """Room for `columns` columns in every slot (zeros: a masked column must not be NaN)."""
        if columns <= self.capacity:
            return
        capacity = max(FIRST_CAPACITY, self.capacity)
        while capacity < columns:
            capacity *= 2
        shape = (self.slots, self.heads, capacity, self.head_dim)

        def grown(old: torch.Tensor | None) -> torch.Tensor:
            new = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if old is not None:
                new[:, :, : self.capacity] = old
            return new

        empty = [None] * self.layers
        self.keys = [grown(t) for t in self.keys or empty]
        self.values = [grown(t) for t in self.values or empty]
        self.capacity = capacity


@dataclass
class _Step:
    """The layout of one step's packed tokens, and what every layer's attention reads of it
    (made once a step)."""

    running: int  # the first `running` tokens: one per running row
    write: torch.Tensor  # [R] the column each running row's new token goes to (CPU)
    rows: torch.Tensor  # [R] 0..R-1 on the device
    columns: torch.Tensor  # `write` on the device
    width: int  # the columns the running rows see: the longest one's, new token included
    starts: list[int]  # per joining request: its first fed token's column (= its prefix)
    tokens: list[int]  # per joining request: how many tokens it feeds
    at: list[int]  # per joining request: where its tokens start in the packed sequence
    device: torch.device
    _masks: dict

    @classmethod
    def plan(cls, lengths: torch.Tensor, starts: list[int], tokens: list[int], device) -> _Step:
        at, offset = [], len(lengths)
        for count in tokens:
            at.append(offset)
            offset += count
        write = lengths.clone()
        width = int(write.max()) + 1 if len(write) else 0
        rows = torch.arange(len(write), device=device)
        return cls(len(write), write, rows, write.to(device), width, starts, tokens, at, device, {})

    def running_mask(self, sliding_window: int | None) -> torch.Tensor:
        """[R, 1, 1, W]: each running row sees its own columns up to its new token."""
        if sliding_window not in self._masks:
            columns = torch.arange(self.width)
            mask = columns[None] <= self.write[:, None]
            if sliding_window is not None:
                mask &= self.write[:, None] - columns[None] < sliding_window
            self._masks[sliding_window] = mask[:, None, None].to(self.device)
        return self._masks[sliding_window]

    def joining_mask(self, offset: int, sliding_window: int | None) -> torch.Tensor:
        """[1, 1, P, start + P] for joining request `offset`."""
        key = (offset, sliding_window)
        if key not in self._masks:
            start, tokens = self.starts[offset], self.tokens[offset]
            self._masks[key] = _causal(start, tokens, sliding_window, self.device)
        return self._masks[key]


def _causal(start: int, tokens: int, sliding_window: int | None, device) -> torch.Tensor:
    """[1, 1, P, start + P]: a joining request's token i sees its prefix and tokens <= i."""
    query = torch.arange(start, start + tokens)[:, None]
    columns = torch.arange(start + tokens)[None]
    mask = columns <= query
    if sliding_window is not None:
        mask &= query - columns < sliding_window
    return mask[None, None].to(device)
