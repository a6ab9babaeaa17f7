"""Padding-free batches: the texts of a right-padded batch are packed several to a row
(first fit, longest first), after a cached prefix (rows of the batch's width) or after one
copy of a soft prompt per row ([prompt | text | text ...]).

Each text sees the prefix or prompt and its own earlier tokens only, at the positions it
would have alone, so the hidden states are the same as unpacked; but the model runs over
fewer positions: no padding, and the prompt once per row instead of once per text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.kernels.attention import NAME as ATTENTION_NAME
from softprompt.kernels.attention import Segments, prefix_row_segments, prompt_row_segments


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices, each bin's lengths summing to at most `capacity`."""
    bins: list[list[int]] = []
    room: list[int] = []
    for item in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[item] <= free:
                bins[b].append(item)
                room[b] -= lengths[item]
                break
        else:
            bins.append([item])
            room.append(capacity - lengths[item])
    return bins


PROMPT_ROW_TOKENS = 256  # text tokens per [prompt | text | ...] row: bounds attention's cost


@dataclass
class Packing:
    """Where each real token of a padded batch goes in the packed batch."""

    rows: int  # packed rows
    source: tuple[torch.Tensor, torch.Tensor]  # (row, column) of each token in the padded batch
    target: tuple[torch.Tensor, torch.Tensor]  # (row, column) of each token in the packed batch
    positions: torch.Tensor  # [rows, width] position ids (prefix length + place in its text)
    mask: torch.Tensor  # [rows, 1, width, prefix + width] True where a query may attend
    segments: Segments | None = None  # the same mask as blocks, for segment attention


def plan_packing(attention_mask: torch.Tensor, prefix_length: int) -> Packing | None:
    """The packing of a right-padded batch after a cached prefix, or None when it would not
    save a row."""
    _check_right_padded(attention_mask)
    rows, width = attention_mask.shape
    lengths = attention_mask.sum(1).tolist()
    bins = first_fit_decreasing(lengths, width)
    if len(bins) == rows:
        return None
    source, target, segment, place = _layout(bins, lengths, width, 0, attention_mask.device)
    text = _text_mask(segment, place)
    prefix = torch.ones((len(bins), width, prefix_length), dtype=torch.bool, device=text.device)
    mask = torch.cat([prefix, text], dim=-1)[:, None]
    segments = prefix_row_segments(bins, lengths, width, prefix_length)
    return Packing(len(bins), source, target, place + prefix_length, mask, segments)


def plan_prompt_packing(
    attention_mask: torch.Tensor, prompt_length: int, capacity: int | None = None
) -> Packing:
    """Rows of [prompt | text | text | ...] for one forward pass with no cache: each text sees
    the prompt and its own earlier tokens at the positions it would have alone. Texts share a
    row up to `capacity` text tokens (default PROMPT_ROW_TOKENS; a longer text gets its own)."""
    _check_right_padded(attention_mask)
    width = attention_mask.shape[1]
    lengths = attention_mask.sum(1).tolist()
    bins = first_fit_decreasing(lengths, max(width, capacity or PROMPT_ROW_TOKENS))
    row_width = prompt_length + max(sum(lengths[i] for i in b) for b in bins)
    device = attention_mask.device
    source, target, segment, place = _layout(bins, lengths, row_width, prompt_length, device)
    segment[:, :prompt_length] = -2  # the prompt: seen by every text of its row
    place[:, :prompt_length] = torch.arange(prompt_length, device=device) - prompt_length
    mask = _text_mask(segment, place) | (segment[:, None, :] == -2) & (segment[:, :, None] >= 0)
    prompt = torch.arange(row_width, device=device) < prompt_length
    mask |= prompt[:, None] & prompt[None, :] & (place[:, :, None] >= place[:, None, :])
    mask |= torch.eye(row_width, dtype=torch.bool, device=device)  # pads: no empty rows (NaN)
    segments = prompt_row_segments(bins, lengths, row_width, prompt_length)
    return Packing(len(bins), source, target, place + prompt_length, mask[:, None], segments)


def _check_right_padded(attention_mask: torch.Tensor) -> None:
    ordered = attention_mask.sort(dim=1, descending=True, stable=True).values
    if not torch.equal(ordered, attention_mask):
        raise ValueError("packing needs right-padded rows (every text's tokens first)")


def _layout(bins, lengths, width: int, start: int, device):
    """Source and target coordinates of every token, and each packed position's text (-1: a
    pad) and place within its text."""
    source_row, source_col, target_row, target_col = [], [], [], []
    for b, members in enumerate(bins):
        offset = start
        for row in members:
            count = int(lengths[row])
            source_row += [row] * count
            source_col += range(count)
            target_row += [b] * count
            target_col += range(offset, offset + count)
            offset += count

    def tensor(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    source = (tensor(source_row), tensor(source_col))
    target = (tensor(target_row), tensor(target_col))
    segment = torch.full((len(bins), width), -1, dtype=torch.long, device=device)
    segment[target] = source[0]
    place = torch.zeros((len(bins), width), dtype=torch.long, device=device)
    place[target] = source[1]
    return source, target, segment, place


def _text_mask(segment: torch.Tensor, place: torch.Tensor) -> torch.Tensor:
    """[rows, q, k]: a token sees the earlier tokens of its own text."""
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0)
    return same & (place[:, :, None] >= place[:, None, :])


def packed_positions(packing: Packing, positions: torch.Tensor, width: int) -> torch.Tensor:
    """Flat packed positions (row * width + column) of padded-batch positions [N, K]."""
    rows, columns = packing.source
    shape = (int(rows.max()) + 1, int(columns.max()) + 1)
    lookup = torch.zeros(shape, dtype=torch.long, device=positions.device)
    lookup[packing.source] = packing.target[0] * width + packing.target[1]
    return lookup.gather(1, positions).flatten().unique()


def pack(values: torch.Tensor, packing: Packing, width: int) -> torch.Tensor:
    """[N, T, ...] padded rows -> [packed rows, T, ...]."""
    packed = values.new_zeros((packing.rows, width, *values.shape[2:]))
    packed[packing.target] = values[packing.source]
    return packed


def unpack(values: torch.Tensor, packing: Packing, rows: int) -> torch.Tensor:
    """[packed rows, T, ...] -> [N, T, ...] padded rows (zeros at the pads)."""
    out = values.new_zeros((rows, *values.shape[1:]))
    out[packing.source] = values[packing.target]
    return out


def attention_mask_for(model, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The boolean mask as the model's attention takes it: sdpa a boolean, others additive."""
    if model.config._attn_implementation in ("sdpa", ATTENTION_NAME):
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min
    )
