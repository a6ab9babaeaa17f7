"""How the rows of a step pick their next tokens: one batched pass over all of them
(`sample_rows`), as vLLM v1's sampler does, with each row still drawing from its own seeded
generator, so that a row's draws never depend on the rows it is batched with.

The pass applies what transformers' warpers apply one row at a time, as tensor operations on
every row at once: the logit bias and the presence/frequency penalties (each row's counts of
the tokens it generated, kept on the device), then greedy rows take the argmax, and sampled
rows their temperature, top-k (one `topk` over the rows) and top-p (one sort of the cut
scores, a softmax and a cumulative sum) and one draw. A draw is what
`torch.multinomial(probs, 1, generator)` computes (the exponential race: the argmax of
probs / q, q ~ Exp(1)), with each row's q filled from its own generator in a loop of one
small device call per row and no sync; q covers the whole vocabulary, as in
`torch.multinomial`, which keeps each generator's stream, and so every seed's tokens, as they
were. The only sync of the step is reading the picked tokens back. A row therefore picks bit
for bit the token that transformers' warpers and `torch.multinomial` pick from its logits
alone (tests/reference.py keeps that path to compare against): the same operations on the
same values, row by row.

A value that differs between rows (temperature, top-p, penalties) is applied to the rows that
share it as the same tensor-and-number operation the one-row path does, not as a tensor of
per-row values: on CUDA, dividing by a number is multiplying by its reciprocal, which is not
the same bits as dividing by a tensor of it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable

import torch

from softprompt.decoding.options import SamplingOptions

NEGATIVE_INFINITY = -float("inf")


class RowSampler:
    """One row's sampling state: its options, its own generator (seeded for that row;
    `seed=None`: a random seed) and how often it generated each token (for the penalties)."""

    def __init__(self, options: SamplingOptions, seed: int | None, device: torch.device) -> None:
        self.options = options
        self.greedy = options.is_greedy
        self.penalised = bool(options.presence_penalty or options.frequency_penalty)
        self.top_p = options.top_p if options.top_p is not None and options.top_p < 1 else None
        self.generator: torch.Generator | None = None
        if not self.greedy:
            seed = random.getrandbits(63) if seed is None else seed
            self.generator = torch.Generator(device=device).manual_seed(seed)
        self.counts: torch.Tensor | None = None  # [vocab] float32, from the first pick on

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits [vocab] (a batch of one: `sample_rows`)."""
        return sample_rows([self], logits[None])[0]

    def _record(self, token: int, vocab: int, device: torch.device) -> None:
        if not self.penalised:
            return
        if self.counts is None:
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        self.counts[token] += 1


def sample_rows(samplers: list[RowSampler], logits: torch.Tensor) -> list[int]:
    """Every row's next token from the step's logits [rows, vocab] (row i by `samplers[i]`),
    in one batched pass; each sampler then counts its token for its penalties."""
    if not samplers:
        return []
    scores = _adjusted(samplers, logits)
    drawn = [i for i, s in enumerate(samplers) if not s.greedy]
    if not drawn:
        tokens = scores.argmax(dim=-1)
    else:
        tokens = torch.empty(len(samplers), dtype=torch.long, device=scores.device)
        greedy = [i for i, s in enumerate(samplers) if s.greedy]
        if greedy:
            tokens[greedy] = scores[greedy].argmax(dim=-1)
        tokens[drawn] = _draw([samplers[i] for i in drawn], _rows(scores, drawn))
    picked = tokens.tolist()  # the step's one sync
    for sampler, token in zip(samplers, picked):
        sampler._record(token, logits.shape[-1], logits.device)
    return picked


def _adjusted(samplers: list[RowSampler], logits: torch.Tensor) -> torch.Tensor:
    """The logits with each row's bias added and its presence and frequency penalties taken
    off (float32 then; unchanged when no row has either)."""
    biased = [i for i, s in enumerate(samplers) if s.options.logit_bias]
    penalised = [i for i, s in enumerate(samplers) if s.counts is not None]
    if not biased and not penalised:
        return logits
    logits = logits.float()  # new tensors from here on: the model's logits stay as they are
    if biased:
        pairs = [(i, token, bias) for i in biased for token, bias in samplers[i].options.logit_bias]
        rows, tokens, biases = zip(*pairs)
        where = (torch.tensor(rows), torch.tensor(tokens))
        where = tuple(w.to(logits.device) for w in where)
        logits = logits.index_put(where, torch.tensor(biases, device=logits.device), True)
    for (frequency, presence), rows in _by_value(
        penalised,
        lambda i: (samplers[i].options.frequency_penalty, samplers[i].options.presence_penalty),
    ).items():
        counts = torch.stack([samplers[i].counts for i in rows])
        penalty = frequency * counts + presence * (counts > 0)
        logits = _on_rows(logits, rows, lambda part, penalty=penalty: part - penalty)
    return logits


def _draw(samplers: list[RowSampler], scores: torch.Tensor) -> torch.Tensor:
    """One token per sampled row from its scores [rows, vocab]: temperature, top-k and top-p,
    softmax, then the exponential race with q drawn from each row's own generator."""
    scores = scores.float()
    warmed = [i for i, s in enumerate(samplers) if s.options.temperature not in (0, 1.0)]
    for temperature, rows in _by_value(warmed, lambda i: samplers[i].options.temperature).items():
        scores = _on_rows(scores, rows, lambda part, t=temperature: part / t)
    scores = _top_k_top_p(samplers, scores)
    probs = torch.softmax(scores, dim=-1)
    race = torch.empty_like(probs)
    for row, sampler in enumerate(samplers):
        race[row].exponential_(generator=sampler.generator)
    return (probs / race).argmax(dim=-1)


def _top_k_top_p(samplers: list[RowSampler], scores: torch.Tensor) -> torch.Tensor:
    """The scores with the tokens outside each row's top k, then outside its top p, at -inf,
    as transformers' warpers cut them: the k-th largest value from one `topk` of the largest
    k asked, then one ascending sort of the cut scores (cheap: most are -inf), their softmax
    and cumulative sum."""
    vocab = scores.shape[-1]
    topk = [i for i, s in enumerate(samplers) if (s.options.top_k or vocab) < vocab]
    if topk:
        keep = torch.tensor([samplers[i].options.top_k for i in topk], device=scores.device)
        largest = _rows(scores, topk).topk(int(keep.max()), dim=-1).values
        kth = largest.gather(1, keep[:, None] - 1)  # each row's k-th largest value
        scores = _on_rows(
            scores, topk, lambda part: part.masked_fill(part < kth, NEGATIVE_INFINITY)
        )
    nucleus = [i for i, s in enumerate(samplers) if s.top_p is not None]
    if nucleus:
        part = _rows(scores, nucleus)
        ordered, order = torch.sort(part, dim=-1)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        remove = torch.zeros_like(cumulative, dtype=torch.bool)
        groups = _by_value(range(len(nucleus)), lambda n: samplers[nucleus[n]].top_p)
        for top_p, rows in groups.items():  # `remove` is this function's own: set in place
            remove[rows] = _rows(cumulative, rows) <= (1 - top_p)
        remove[:, -1] = False  # the most likely token always stays
        remove = remove.scatter(1, order, remove)
        scores = _on_rows(scores, nucleus, lambda part: part.masked_fill(remove, NEGATIVE_INFINITY))
    return scores


def _rows(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Those rows of `tensor` (itself, not a copy, when they are all of its rows in order)."""
    return tensor if rows == list(range(tensor.shape[0])) else tensor[rows]


def _on_rows(tensor: torch.Tensor, rows: list[int], change: Callable) -> torch.Tensor:
    """`tensor` with `change` applied to those rows, as a new tensor (`tensor` is left as it
    is: it may be the model's logits)."""
    if rows == list(range(tensor.shape[0])):
        return change(tensor)
    index = torch.tensor(rows, device=tensor.device)
    return tensor.index_copy(0, index, change(tensor[rows]))


def _by_value(indices, value: Callable[[int], Hashable]) -> dict:
    """The indices grouped by their value, in order: {value: [indices]}."""
    groups: dict = {}
    for index in indices:
        groups.setdefault(value(index), []).append(index)
    return groups
