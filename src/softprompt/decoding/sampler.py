"""How one row picks its next token: greedy, or temperature / top-k / top-p as transformers
applies them (its own warpers) and then one draw from the row's own generator, so that a row's
draws never depend on the rows it is batched with."""

from __future__ import annotations

import random

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from softprompt.decoding.options import SamplingOptions

NO_IDS = torch.zeros((1, 0), dtype=torch.long)  # the warpers used here do not read the ids


class RowSampler:
    """One row's token picker, seeded for that row (`seed=None`: a random seed)."""

    def __init__(self, options: SamplingOptions, seed: int | None, device: torch.device) -> None:
        self.greedy = options.is_greedy
        self.warpers = LogitsProcessorList(_warpers(options))
        self.generator: torch.Generator | None = None
        if not self.greedy:
            seed = random.getrandbits(63) if seed is None else seed
            self.generator = torch.Generator(device=device).manual_seed(seed)

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from one row's logits [vocab]."""
        if self.greedy:
            return int(logits.argmax())
        scores = self.warpers(NO_IDS, logits.float()[None])
        probs = torch.softmax(scores, dim=-1)[0]
        return int(torch.multinomial(probs, 1, generator=self.generator))


def _warpers(options: SamplingOptions) -> list[LogitsProcessor]:
    warpers: list[LogitsProcessor] = []
    if options.temperature not in (0, 1.0):
        warpers.append(TemperatureLogitsWarper(options.temperature))
    if options.top_k is not None:
        warpers.append(TopKLogitsWarper(options.top_k))
    if options.top_p is not None and options.top_p < 1.0:
        warpers.append(TopPLogitsWarper(options.top_p))
    return warpers
