"""What one generation asks for: how many tokens, greedy or sampled (temperature, top-k,
top-p), a seed and stop strings; and the per-row seed that makes a sample reproducible."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from softprompt.errors import UsageError


@dataclass(frozen=True)
class SamplingOptions:
    """Greedy decoding (`greedy`, or temperature 0), or sampling with temperature / top-k /
    top-p. `seed=None` draws a fresh seed for every row; `stop` strings end a row's text
    (the stop string itself is not part of it). As in OpenAI's API, `presence_penalty` is
    taken off the logit of every token the row has generated, `frequency_penalty` once per
    time it did, and `logit_bias` ((token id, bias) pairs) is added, before greedy or
    sampled picking."""

    max_new_tokens: int = 40
    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = 0
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    def check(self) -> None:
        """A UsageError for a value no decoder can use (named as the CLI names it)."""
        if self.max_new_tokens < 1:
            raise UsageError("--max-new-tokens must be at least 1")
        if self.temperature < 0:
            raise UsageError("--temperature must be 0 (greedy) or above")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError("--top-k must be at least 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError("--top-p must be in (0, 1]")


def row_seeds(seed: int, texts: list[str], samples: list[int]) -> list[int]:
    """One generator seed per row, a function of (seed, sample number, text) alone (SHA-256,
    so that it is the same in every process and Python run, unlike `hash`): a row samples the
    same continuation alone or batched, from `generate` or from the server."""
    seeds = []
    for text, sample in zip(texts, samples):
        digest = hashlib.sha256(f"{seed}\0{sample}\0{text}".encode()).digest()
        seeds.append(int.from_bytes(digest[:8], "little") >> 1)  # a non-negative int64
    return seeds
