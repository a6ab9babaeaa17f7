"""KV memory in fixed-size blocks (paged, as vLLM keeps it): every layer's keys and values
live in one pool of `block_size`-token blocks, a row holds a table of the blocks its columns
are in, gets a block when it grows past its last one and gives them back when it leaves.
A prefix's keys/values are written once into blocks that every row steered by it shares
(`Prefixes`, reference-counted).

Admission is by memory: a row reserves, when it joins, the blocks it may ever need (prompt
and `max_new_tokens`), so a running row never waits for or fails for another's memory; the
pool's budget (`max_blocks`, None: unbounded) is what the server's `--max-kv-tokens` sets.
Block 0 is never handed out: tables are padded with it (it holds zeros, never NaN).
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass

import torch

from softprompt.steering.prefix import prefix_geometry

BLOCK_SIZE = 16
FIRST_BLOCKS = 64
FREE_SHARE = 0.5  # of the memory free when the server starts, the default KV budget


class OutOfBlocks(RuntimeError):
    """The pool's budget has no block left (admission should have prevented it)."""


class BlockPool:
    """Every layer's keys and values as [kv_heads, blocks, block_size, head_dim] tensors; the
    blocks' reference counts, the free list and the budget."""

    def __init__(
        self,
        model,
        dtype: torch.dtype,
        device: torch.device,
        block_size: int = BLOCK_SIZE,
        max_blocks: int | None = None,
    ) -> None:
        self.layers, self.heads, self.head_dim = prefix_geometry(model)
        self.dtype, self.device, self.block_size = dtype, device, block_size
        self.max_blocks = max_blocks
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.refs: list[int] = []  # per block; block 0 (padding) holds one forever
        self.free: list[int] = []
        self.reserved = 0  # blocks promised to running rows, not yet allocated
        self.peak = 0  # the most blocks in use at once

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    @property
    def used(self) -> int:
        """Blocks held by rows or prefixes (padding not counted)."""
        return len(self.refs) - 1 - len(self.free) if self.refs else 0

    def available(self) -> float:
        """Blocks that can still be promised: the budget less what is used and reserved."""
        if self.max_blocks is None:
            return math.inf
        return self.max_blocks - self.used - self.reserved

    def allocate(self, count: int) -> list[int]:
        """`count` fresh blocks (reference count 1)."""
        if count > len(self.free):
            self._grow(count - len(self.free))
        taken = [self.free.pop() for _ in range(count)]
        for block in taken:
            self.refs[block] = 1
        self.peak = max(self.peak, self.used)
        return taken

    def hold(self, blocks: list[int]) -> None:
        for block in blocks:
            self.refs[block] += 1

    def release(self, blocks: list[int]) -> None:
        """Drop one reference to each block; a block nobody holds is free again."""
        for block in blocks:
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self.free.append(block)

    def write(self, table: list[int], start: int, keys: torch.Tensor, values: torch.Tensor):
        """Write [layers, kv_heads, n, head_dim] keys/values at columns start.. of a row whose
        blocks are `table`."""
        blocks, offsets = self.addresses(table, start, int(keys.shape[-2]))
        for layer in range(self.layers):
            self.keys[layer][:, blocks, offsets] = keys[layer].to(self.device, self.dtype)
            self.values[layer][:, blocks, offsets] = values[layer].to(self.device, self.dtype)

    def read(self, table: list[int], start: int, count: int):
        """Keys and values [layers, kv_heads, count, head_dim] at columns start.. of a row."""
        blocks, offsets = self.addresses(table, start, count)
        keys = torch.stack([k[:, blocks, offsets] for k in self.keys])
        return keys, torch.stack([v[:, blocks, offsets] for v in self.values])

    def addresses(self, table: list[int], start: int, count: int):
        """The (block, offset) tensors of columns start..start+count of a row's table."""
        columns = torch.arange(start, start + count)
        blocks = torch.tensor(table, dtype=torch.long)[columns // self.block_size]
        return blocks.to(self.device), (columns % self.block_size).to(self.device)

    def _grow(self, more: int) -> None:
        have = len(self.refs)
        wanted = have + more + (0 if have else 1)
        limit = None if self.max_blocks is None else self.max_blocks + 1
        if limit is not None and wanted > limit:
            raise OutOfBlocks(
                f"KV memory is full ({self.max_blocks} blocks of {self.block_size} tokens)"
            )
        capacity = max(FIRST_BLOCKS, have)
        while capacity < wanted:
            capacity *= 2
        capacity = capacity if limit is None else min(capacity, limit)
        shape = (self.heads, capacity, self.block_size, self.head_dim)

        def grown(old: torch.Tensor | None) -> torch.Tensor:
            new = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if old is not None:
                new[:, :have] = old
            return new

        empty = [None] * self.layers
        self.keys = [grown(t) for t in self.keys or empty]
        self.values = [grown(t) for t in self.values or empty]
        self.refs += [0] * (capacity - have)
        if not have:
            self.refs[0] = 1  # padding
        self.free += list(range(capacity - 1, max(have, 1) - 1, -1))

    def bytes_per_block(self) -> int:
        element = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * self.layers * self.heads * self.block_size * self.head_dim * element

    def set_budget(self, tokens: int | None = None, gigabytes: float | None = None) -> None:
        """The budget as tokens, or as gigabytes of keys and values; neither: a share of the
        memory free now (`FREE_SHARE` of it; unbounded where it cannot be read)."""
        if tokens is None and gigabytes is None:
            free = _free_bytes(self.device)
            gigabytes = None if free is None else free * FREE_SHARE / 1e9
        if tokens is not None:
            self.max_blocks = max(1, tokens // self.block_size)
        elif gigabytes is not None:
            self.max_blocks = max(1, int(gigabytes * 1e9 // self.bytes_per_block()))
        else:
            self.max_blocks = None

    @property
    def max_tokens(self) -> int | None:
        return None if self.max_blocks is None else self.max_blocks * self.block_size


def _free_bytes(device: torch.device) -> int | None:
    """Memory free on the device now (for a CPU: the system's available memory)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(eq=False)
class SharedPrefix:
    """A prefix's keys/values held once: its whole blocks (shared by the rows that use it) and
    the keys/values of its last, partial block (copied into each row's first own block)."""

    length: int
    blocks: list[int]
    tail_keys: torch.Tensor | None
    tail_values: torch.Tensor | None
    owner: weakref.ref
    users: int = 0


class Prefixes:
    """Prefix blocks per steering object (so per adapter): a prefix's written on first use, a
    soft prompt's once a row has computed them; shared by every row steered by it, dropped
    when the steering is gone (its adapter unloaded) or when the pool needs the blocks and no
    row uses them."""

    def __init__(self, pool: BlockPool) -> None:
        self.pool = pool
        self.entries: dict[int, SharedPrefix] = {}

    def cost(self, steering, length: int) -> int:
        """Blocks a row with this prefix takes from the pool before its own: none when the
        prefix is already held."""
        entry = self.entries.get(id(steering))
        if entry is not None and entry.owner() is steering:
            return 0
        return length // self.pool.block_size

    def take(self, steering, keys: torch.Tensor, values: torch.Tensor) -> SharedPrefix:
        """The shared prefix of `steering` ([layers, kv_heads, L, head_dim]), written now if
        it is not held; the caller's row counts as one more user."""
        self.sweep()
        entry = self.entries.get(id(steering))
        if entry is None or entry.owner() is not steering:
            entry = self._write(steering, keys, values)
            self.entries[id(steering)] = entry
        entry.users += 1
        self.pool.hold(entry.blocks)
        return entry

    def held(self, steering) -> SharedPrefix | None:
        """The keys/values held for `steering`, if any."""
        entry = self.entries.get(id(steering))
        return entry if entry is not None and entry.owner() is steering else None

    def store(self, steering, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Hold `steering`'s keys/values (computed by a row: a soft prompt's) unless held."""
        self.sweep()
        if self.held(steering) is None:
            self.entries[id(steering)] = self._write(steering, keys, values)

    def leave(self, entry: SharedPrefix, blocks: list[int]) -> None:
        entry.users -= 1
        self.pool.release(blocks)

    def sweep(self, needed: int = 0) -> None:
        """Drop prefixes whose steering is gone; with `needed`, also unused ones until the
        pool can promise `needed` blocks."""
        for key, entry in list(self.entries.items()):
            gone = entry.owner() is None
            if entry.users == 0 and (gone or self.pool.available() < needed):
                self.pool.release(entry.blocks)
                del self.entries[key]

    def _write(self, steering, keys: torch.Tensor, values: torch.Tensor) -> SharedPrefix:
        length = int(keys.shape[-2])
        whole = length // self.pool.block_size * self.pool.block_size
        blocks = self.pool.allocate(whole // self.pool.block_size)
        if blocks:
            self.pool.write(blocks, 0, keys[:, :, :whole], values[:, :, :whole])
        tail_k = keys[:, :, whole:] if whole < length else None
        tail_v = values[:, :, whole:] if whole < length else None
        return SharedPrefix(length, blocks, tail_k, tail_v, weakref.ref(steering))
