"""Attention over packed rows that computes only the scores a text may use.

In a packed row [prompt | text | text ...] (or [text | text ...] after a cached prefix) each
text sees the prompt (prefix) and its own earlier tokens, nothing else. A dense kernel still
computes the whole row's score matrix and masks most of it away: for 8 texts of 20 tokens
after a 16-token prompt, 86% of it. Here each
segment of a row (its prompt, or one text) gathers its queries and the keys it may see, and
the segments attend as one small batch. The result is the dense masked attention's (tested).

Causal models loaded on the CPU run with this attention (`use_segment_attention`): a forward
call that passes `segments=` takes the short path; every other call, and any layer whose
attention needs more than a mask and a scale (logit soft-capping, attention sinks, dropout),
runs the usual sdpa with the dense mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NAME = "softprompt_segments"


@dataclass
class Segments:
    """Which keys each query of a packed batch may see, as a batch of small blocks.

    Positions are flat: row * width + column, over the batch's rows."""

    query_gather: torch.Tensor  # [N, Q] the queries of each segment (pads: any position)
    query_scatter: torch.Tensor  # [N * Q] where each result goes (pads: one spare slot at the end)
    keys: torch.Tensor  # [N, K] the keys each segment may see (pads: any position)
    mask: torch.Tensor  # [N, 1, Q, K] True where a query may attend
    positions: int  # rows * width of the queries
    query_positions: torch.Tensor  # [N, Q] position ids (for sliding-window layers)
    key_positions: torch.Tensor  # [N, K]

    def visible(self, sliding_window: int | None) -> torch.Tensor:
        """The mask, narrowed to keys less than `sliding_window` positions back."""
        if sliding_window is None:
            return self.mask
        distance = self.query_positions[:, :, None] - self.key_positions[:, None, :]
        return self.mask & (distance < sliding_window)[:, None]


def prompt_row_segments(
    bins: list[list[int]], lengths: list[int], width: int, prompt_length: int
) -> Segments:
    """Segments of rows [prompt | text | text ...] (`bins[r]`: the texts in row r, in order):
    each row's prompt attends causally to itself; each text to the prompt and, causally, itself.
    """
    return _segments(bins, lengths, width, width, prompt_length, in_row=True)


def prefix_row_segments(
    bins: list[list[int]], lengths: list[int], width: int, prefix_length: int
) -> Segments:
    """Segments of rows [text | text ...] after a cached prefix (keys: [prefix | row]): each
    text attends to the prefix and, causally, itself."""
    return _segments(bins, lengths, width, prefix_length + width, prefix_length, in_row=False)


def _segments(bins, lengths, width: int, key_width: int, shared: int, in_row: bool) -> Segments:
    """Blocks of packed rows whose first `shared` keys every text sees: the row's own prompt
    (`in_row`: also queries, causal among themselves) or a cached prefix (keys only)."""
    longest = max(max(lengths[i] for i in row) for row in bins)
    queries = max(shared if in_row else 1, longest)
    keys = shared + longest
    shift = key_width - width  # a query's column + shift = its own key's column
    blocks = [(r, 0, shared, True) for r in range(len(bins))] if in_row else []
    for r, row in enumerate(bins):
        start = shared if in_row else 0
        for item in row:
            blocks.append((r, start, int(lengths[item]), False))
            start += int(lengths[item])
    count = len(blocks)
    query_gather = torch.zeros((count, queries), dtype=torch.long)
    query_scatter = torch.full((count, queries), len(bins) * width, dtype=torch.long)
    key_index = torch.zeros((count, keys), dtype=torch.long)
    query_positions = torch.zeros((count, queries), dtype=torch.long)
    key_positions = torch.zeros((count, keys), dtype=torch.long)
    key_positions[:, :shared] = torch.arange(shared)
    mask = torch.zeros((count, queries, keys), dtype=torch.bool)
    mask[:, :, 0] = True  # pad queries see one key (no empty softmax); their result is dropped
    causal = torch.ones((queries, queries), dtype=torch.bool).tril()
    for n, (row, start, length, is_prompt) in enumerate(blocks):
        span = torch.arange(start, start + length)
        query_gather[n, :length] = row * width + span
        query_scatter[n, :length] = row * width + span
        query_positions[n, :length] = torch.arange(length) + (0 if is_prompt else shared)
        key_index[n, :shared] = row * key_width + torch.arange(shared)
        if is_prompt:
            mask[n, :length, :shared] = causal[:length, :length]
            continue
        key_index[n, shared : shared + length] = row * key_width + shift + span
        key_positions[n, shared : shared + length] = query_positions[n, :length]
        mask[n, :length, :shared] = True
        mask[n, :length, shared : shared + length] = causal[:length, :length]
    return Segments(
        query_gather,
        query_scatter.flatten(),
        key_index,
        mask[:, None],
        len(bins) * width,
        query_positions,
        key_positions,
    )


def segment_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    segments: Segments | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: [B, H, S, D] queries, [B, H_kv, S, D] keys/values
    in, [B, S, H, D] out. Without `segments` (or where a layer needs more), plain sdpa. With
    `row_cache` (the serving engine's `decoding.rows.StepAttention`), that object attends and
    keeps the keys."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    needs_more = kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None
    rows = kwargs.pop("row_cache", None)
    if rows is not None:
        if needs_more or dropout > 0:
            raise NotImplementedError(
                "this model's attention needs logit soft-capping or attention sinks, which the "
                "serving engine's row attention does not compute"
            )
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return rows.attend(
            module.layer_idx, query, key, value, scale, kwargs.get("sliding_window")
        ), None
    if segments is None or needs_more or dropout > 0:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    rows, heads, width, dim = query.shape
    q = _gather(query, segments.query_gather).transpose(1, 2)  # [N, H, Q, D]
    k = _gather(key, segments.keys).transpose(1, 2)  # [N, H_kv, K, D]
    v = _gather(value, segments.keys).transpose(1, 2)
    visible = segments.visible(kwargs.get("sliding_window"))
    scale = scaling if scaling is not None else dim**-0.5
    out = masked_attention(q, k, v, visible, scale)
    out = out.transpose(1, 2).reshape(-1, heads, dim)
    result = out.new_zeros((segments.positions + 1, heads, dim))
    result = result.index_copy(0, segments.query_scatter, out)
    return result[:-1].view(rows, width, heads, dim), None


def masked_attention(q, k, v, visible: torch.Tensor, scale: float) -> torch.Tensor:
    """Masked attention of the segments ([N, H, Q, D] queries, grouped keys/values): torch's
    fused kernel in float32; plain matmuls in half precision, where CPUs run them faster."""
    if q.dtype == torch.float32:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=visible, scale=scale, enable_gqa=True
        )
    count, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    # query head h uses key head h // group: fold each key head's queries into one matrix
    q = q.reshape(count, kv_heads, group * length, dim)
    scores = (q @ k.transpose(-1, -2)).view(count, kv_heads, group, length, -1) * scale
    scores = scores.masked_fill(~visible[:, :, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    out = probs.view(count, kv_heads, group * length, -1) @ v
    return out.view(count, heads, length, dim)


def _gather(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, H, S, D] states at flat positions [N, M] -> [N, M, H, D]."""
    flat = states.transpose(1, 2).reshape(-1, states.shape[1], states.shape[3])
    return flat.index_select(0, index.flatten()).view(*index.shape, *flat.shape[1:])


def use_segment_attention(model: torch.nn.Module) -> bool:
    """Switch a transformers model to segment attention (sdpa for every ordinary call);
    False where the model cannot switch its attention function."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if model.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(NAME, segment_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError):
        return False
    return model.config._attn_implementation == NAME
