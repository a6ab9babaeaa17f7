"""Log-probabilities as a decoder reports them: of each chosen (or given) token and of the most
likely alternatives, under the model's own distribution (before temperature, penalties or
bias), as OpenAI's API returns them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_TOP = 20  # what OpenAI's API allows


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability and the `top` most likely tokens at its position, as
    (token id, log-probability) pairs, most likely first; a prompt's first token has none
    (None)."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """For rows of logits [N, vocab] and the token that followed each: its log-probability
    and the `top` most likely tokens there."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
    if top > 0:
        values, ids = logp.topk(min(top, logp.shape[-1]), dim=-1)
        best = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        best = [()] * len(tokens)
    return [TokenLogprob(t, lp, b) for t, lp, b in zip(tokens, chosen, best)]
