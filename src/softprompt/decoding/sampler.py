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
        self.options = options
        self.greedy = options.is_greedy
        self.warpers = LogitsProcessorList(_warpers(options))
        self.generator: torch.Generator | None = None
        if not self.greedy:
            seed = random.getrandbits(63) if seed is None else seed
            self.generator = torch.Generator(device=device).manual_seed(seed)

    def pick(self, logits: torch.Tensor, generated: list[int] = ()) -> int:
        """The next token from one row's logits [vocab], after the tokens it `generated`."""
        logits = self._adjusted(logits, generated)
        if self.greedy:
            return int(logits.argmax())
        scores = self.warpers(NO_IDS, logits.float()[None])
        probs = torch.softmax(scores, dim=-1)[0]
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _adjusted(self, logits: torch.Tensor, generated: list[int]) -> torch.Tensor:
        """The logits with the bias added and the presence and frequency penalties taken off."""
        options = self.options
        if options.logit_bias:
            ids, bias = zip(*options.logit_bias)
            logits = logits.float().clone()
            logits[list(ids)] += torch.tensor(bias, device=logits.device)
        penalised = options.presence_penalty or options.frequency_penalty
        if penalised and generated:
            counts = torch.bincount(
                torch.tensor(generated, device=logits.device), minlength=logits.shape[-1]
            ).to(torch.float32)
            penalty = options.frequency_penalty * counts + options.presence_penalty * (counts > 0)
            logits = logits.float() - penalty
        return logits


def _warpers(options: SamplingOptions) -> list[LogitsProcessor]:
    warpers: list[LogitsProcessor] = []
    if options.temperature not in (0, 1.0):
        warpers.append(TemperatureLogitsWarper(options.temperature))
    if options.top_k is not None:
        warpers.append(TopKLogitsWarper(options.top_k))
    if options.top_p is not None and options.top_p < 1.0:
        warpers.append(TopPLogitsWarper(options.top_p))
    return warpers
