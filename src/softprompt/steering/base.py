"""The one concept every forward pass goes through: what steers it.

A `Steering` is a soft prompt (input embeddings in front of the text), a prefix (per-layer
keys/values in the cache), or nothing; one for the whole batch or one per row. Tasks,
evaluation, generation, explain and serving only call its methods, so a new kind of steering
is one new class, not a branch in every caller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from softprompt.models import Backbone


@dataclass
class SteeringParts:
    """What a batch-wide steering puts in front of a row: input embeddings [L_in, d] and
    cached keys/values [layers, kv_heads, L_cache, head_dim] (None where it puts nothing).
    A mixed batch is assembled from these."""

    embeddings: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    @property
    def cache_length(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    @property
    def input_length(self) -> int:
        return 0 if self.embeddings is None else int(self.embeddings.shape[0])


class Steering(ABC):
    """What steers a forward pass of a right-padded batch of token rows."""

    @property
    def input_length(self) -> int:
        """Input positions it takes in front of every row (a soft prompt's length)."""
        return 0

    @property
    def length(self) -> int:
        """Its length in virtual tokens (0 for no steering)."""
        return 0

    @property
    def per_row(self) -> bool:
        """One steering per batch row (as opposed to one for the whole batch)."""
        return False

    def select(self, rows: torch.Tensor) -> Steering:
        """The steering of the batch rows `rows` (indices into its own rows); a batch-wide
        steering steers every row alike, so it is returned as it is."""
        return self

    @abstractmethod
    def parts(self) -> SteeringParts:
        """Its input embeddings and cached keys/values (a batch-wide steering only)."""

    @abstractmethod
    def hidden(
        self,
        backbone: Backbone,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        read: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Last hidden states of the steered rows and the column of each row's first token.

        `read`: the token positions [N, K] the caller will read; only those states need be
        final (CPU fast paths skip the last MLP elsewhere). None: all."""


class NoSteering(Steering):
    """The bare model."""

    def parts(self) -> SteeringParts:
        return SteeringParts()

    def hidden(self, backbone, input_ids, attention_mask, read=None):
        device = backbone.device
        embeds = backbone.embed(input_ids.to(device))
        keep = flat_positions(cpu_read(read, device), embeds.shape[1], 0)
        return backbone.body(embeds, attention_mask.to(device), read=keep), 0


def cpu_read(read: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """The read positions where the last-MLP cut pays: on CPUs. On a GPU a step is bound by
    kernel launches, not arithmetic, so there every position is computed."""
    return read.to(device) if read is not None and device.type == "cpu" else None


def flat_positions(read: torch.Tensor | None, width: int, offset: int) -> torch.Tensor | None:
    """Flat positions (row * width + column) of token positions [N, K] shifted by `offset`."""
    if read is None:
        return None
    rows = torch.arange(read.shape[0], device=read.device)[:, None]
    return (rows * width + offset + read).flatten().unique()
