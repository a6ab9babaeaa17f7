"""A batch whose rows are steered differently: soft prompts and prefixes of any lengths and
bare rows, in one forward pass: the ablated variants `explain` scores together, and any
per-row steering a caller passes (a list to `as_steering`). The server's engine does not use
it: its rows keep their steering in the engine's own cache (softprompt.decoding.rows).

Every row's soft prompt is right-aligned in front of its tokens, and its prefix right-aligned
in the cache; what a row lacks is padding under a 0 mask. Positions count from each row's first
real position, so a row sees exactly what it would see alone.
"""

from __future__ import annotations

import torch

from softprompt.models import Backbone
from softprompt.steering.base import Steering, SteeringParts
from softprompt.steering.prefix import prefix_cache


class MixedSteering(Steering):
    """One batch-wide steering per row (of any kind and length)."""

    def __init__(self, rows: list[Steering]) -> None:
        if not rows:
            raise ValueError("a mixed steering needs at least one row")
        self.rows = rows
        self.row_parts = [row.parts() for row in rows]

    @property
    def per_row(self) -> bool:
        return True

    @property
    def input_length(self) -> int:
        return max(p.input_length for p in self.row_parts)

    @property
    def length(self) -> int:
        return max(p.input_length + p.cache_length for p in self.row_parts)

    def parts(self) -> SteeringParts:
        raise ValueError("a mixed steering has one set of parts per row; select a row first")

    def select(self, rows: torch.Tensor) -> Steering:
        return MixedSteering([self.rows[i] for i in rows.tolist()])

    def hidden(self, backbone, input_ids, attention_mask, read=None):
        """Right-padded rows after their steering; the states of row r's token j are at
        column `input_length + j`."""
        device = backbone.device
        tokens, mask = backbone.embed(input_ids.to(device)), attention_mask.to(device)
        inputs, input_mask = self._inputs(tokens, mask)
        inputs_embeds, full_mask, cache = self._with_cache(backbone, inputs, input_mask)
        positions = _positions(full_mask)[:, full_mask.shape[1] - inputs.shape[1] :]
        hidden = backbone.body(
            inputs_embeds, full_mask, past_key_values=cache, position_ids=positions
        )
        return hidden, self.input_length

    def _inputs(self, tokens: torch.Tensor, mask: torch.Tensor):
        """Each row's soft prompt right before its real tokens (right-padded rows, tokens from
        column `input_length` on)."""
        rows, width, hidden = tokens.shape
        front = self.input_length
        inputs = tokens.new_zeros((rows, front + width, hidden))
        full = mask.new_zeros((rows, front + width))
        for r, parts in enumerate(self.row_parts):
            inputs[r, front:], full[r, front:] = tokens[r], mask[r]
            if parts.embeddings is not None:
                inputs[r, front - parts.input_length : front] = parts.embeddings.to(tokens)
                full[r, front - parts.input_length : front] = 1
        return inputs, full

    def _with_cache(self, backbone: Backbone, inputs, input_mask):
        """The per-row prefixes as one right-aligned cache, and the mask over [cache | input]."""
        rows, device = inputs.shape[0], inputs.device
        width = max(p.cache_length for p in self.row_parts)
        if width == 0:
            return inputs, input_mask, None
        layers, kv_heads, _, head_dim = next(
            p.keys.shape for p in self.row_parts if p.keys is not None
        )
        keys = inputs.new_zeros((layers, rows, kv_heads, width, head_dim))
        values = torch.zeros_like(keys)
        cache_mask = input_mask.new_zeros((rows, width))
        for r, parts in enumerate(self.row_parts):
            if parts.keys is None:
                continue
            length = parts.cache_length
            keys[:, r, :, width - length :] = parts.keys.to(keys)
            values[:, r, :, width - length :] = parts.values.to(values)
            cache_mask[r, width - length :] = 1
        cache = prefix_cache(backbone.model, keys.to(device), values.to(device), rows, frozen=True)
        return inputs, torch.cat([cache_mask, input_mask], dim=1), cache


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count each row's real positions from 0 (padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)
