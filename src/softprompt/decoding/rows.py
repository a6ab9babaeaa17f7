"""The attention of one engine step over the rows' KV blocks (`decoding.blocks`).

A step feeds the model one packed sequence: one new token for each decoding row, then a chunk
of the inputs of each prefilling row (`decoding.scheduler.StepPlan`). Each layer hands its
attention to `StepAttention.attend`: the new keys/values go into their rows' blocks; the
decoding rows attend, as one batch, to their own blocks gathered through their block tables;
each chunk attends to its row's earlier columns (prefix, inputs fed before) and, causally,
itself. A row's column c holds position c, so its output is what it gives alone.
"""

from __future__ import annotations

import torch

from softprompt.decoding.blocks import BlockPool
from softprompt.kernels.attention import masked_attention


class StepAttention:
    """What every layer's attention reads of one step (laid out once a step)."""

    def __init__(self, pool: BlockPool, plan) -> None:
        self.pool = pool
        device, size = pool.device, pool.block_size
        self.running = len(plan.decode)
        self._masks: dict = {}
        self.lengths = torch.tensor([r.length for r in plan.decode], dtype=torch.long)
        if self.running:
            used = [pool.blocks_for(r.length + 1) for r in plan.decode]
            blocks = max(used)
            table = torch.tensor(
                [r.table[:n] + [0] * (blocks - n) for r, n in zip(plan.decode, used)],
                dtype=torch.long,
            )  # padded with block 0
            self.table = table.flatten().to(device)
            self.width = blocks * size
            rows = torch.arange(self.running)
            self.write_block = table[rows, self.lengths // size].to(device)
            self.write_offset = (self.lengths % size).to(device)
        self.chunks = []
        for chunk in plan.chunks:
            row, end = chunk.row, chunk.row.length + chunk.count
            table = torch.tensor(row.table[: pool.blocks_for(end)], dtype=torch.long)
            where = pool.addresses(row.table, row.length, chunk.count)
            self.chunks.append((row.length, chunk.count, chunk.at, table.to(device), where))

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
        keys, values = self.pool.keys[layer], self.pool.values[layer]
        heads, dim = keys.shape[0], keys.shape[-1]
        outputs = []
        running = self.running
        if running:
            keys[:, self.write_block, self.write_offset] = key[0, :, :running]
            values[:, self.write_block, self.write_offset] = value[0, :, :running]
            shape = (heads, running, self.width, dim)
            k = keys.index_select(1, self.table).view(shape).transpose(0, 1)
            v = values.index_select(1, self.table).view(shape).transpose(0, 1)
            q = query[0, :, :running].transpose(0, 1)[:, :, None]  # [R, H, 1, D]
            out = masked_attention(q, k, v, self._running_mask(sliding_window), scale)
            outputs.append(out[:, :, 0])  # [R, H, D]
        for index, (start, count, at, table, (blocks, offsets)) in enumerate(self.chunks):
            keys[:, blocks, offsets] = key[0, :, at : at + count]
            values[:, blocks, offsets] = value[0, :, at : at + count]
            end = start + count
            k = keys.index_select(1, table).view(heads, -1, dim)[None, :, :end]
            v = values.index_select(1, table).view(heads, -1, dim)[None, :, :end]
            q = query[:, :, at : at + count]  # [1, H, P, D]
            mask = self._chunk_mask(index, start, count, sliding_window)
            outputs.append(masked_attention(q, k, v, mask, scale)[0].transpose(0, 1))
        return torch.cat(outputs, dim=0)[None]

    def _running_mask(self, sliding_window: int | None) -> torch.Tensor:
        """[R, 1, 1, W]: each decoding row sees its own columns up to its new token."""
        if sliding_window not in self._masks:
            columns = torch.arange(self.width)
            mask = columns[None] <= self.lengths[:, None]
            if sliding_window is not None:
                mask &= self.lengths[:, None] - columns[None] < sliding_window
            self._masks[sliding_window] = mask[:, None, None].to(self.pool.device)
        return self._masks[sliding_window]

    def _chunk_mask(self, index: int, start: int, count: int, sliding_window: int | None):
        key = (index, sliding_window)
        if key not in self._masks:
            self._masks[key] = _causal(start, count, sliding_window, self.pool.device)
        return self._masks[key]


def _causal(start: int, tokens: int, sliding_window: int | None, device) -> torch.Tensor:
    """[1, 1, P, start + P]: a chunk's token i sees the columns before it and tokens <= i."""
    query = torch.arange(start, start + tokens)[:, None]
    columns = torch.arange(start + tokens)[None]
    mask = columns <= query
    if sliding_window is not None:
        mask &= query - columns < sliding_window
    return mask[None, None].to(device)
