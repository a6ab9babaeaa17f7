"""After a step ran: the echoed prompts scored, every sampled row's next token picked in one
batched pass (`sample_rows`: each row still draws from its own seeded `RowSampler`, so its
draws never depend on its neighbours), the new tokens decoded (`RowText`, O(new tokens)), text
that became final sent as typed events (`decoding.events`); returns the rows that are done."""

from __future__ import annotations

import torch

from softprompt.decoding.events import Delta, Finished, Started
from softprompt.decoding.logprobs import TokenLogprob, token_logprobs
from softprompt.decoding.sampler import sample_rows
from softprompt.decoding.scheduler import Row, StepPlan


def update(plan: StepPlan, logits: torch.Tensor, eos: set[int]) -> list[Row]:
    """Score, sample and emit for one step; the rows that finished or were cancelled."""
    _score_prompts(plan, logits[len(plan.sampled) :])
    for row in plan.sampled[len(plan.decode) :]:  # their prefill ended in this step
        if row.job.echo and row.prompt_scores is None:
            row.prompt_scores = [TokenLogprob(row.job.prompt_ids[0], None)]
        row.job.emit(Started(row.prompt_scores))
    logits = logits[: len(plan.sampled)]
    picked = _pick(plan.sampled, logits)
    done = []
    for n, (row, row_logits) in enumerate(zip(plan.sampled, logits)):
        if n not in picked:  # max_new_tokens 0: only the prompt's log-probabilities
            _finish(row, "length")
            done.append(row)
            continue
        reason = _advance(row, picked[n], row_logits, eos)
        if reason is not None:
            _finish(row, reason)
        if reason is not None or row.job.cancelled.is_set():
            done.append(row)
    return done


def _score_prompts(plan: StepPlan, logits: torch.Tensor) -> None:
    """The echoed prompt tokens' log-probabilities, from their positions' logits."""
    start = 0
    for echo in plan.echoes:
        rows = logits[start : start + len(echo.targets)]
        start += len(echo.targets)
        row = echo.row
        if row.prompt_scores is None:
            row.prompt_scores = [TokenLogprob(row.job.prompt_ids[0], None)]
        row.prompt_scores += token_logprobs(rows, echo.targets, row.job.logprobs or 0)


def _pick(rows: list[Row], logits: torch.Tensor) -> dict[int, int]:
    """{index in `rows`: its next token} for every row that generates, all in one pass."""
    picking = [n for n, row in enumerate(rows) if row.job.options.max_new_tokens]
    chosen = logits if len(picking) == len(rows) else logits[picking]
    tokens = sample_rows([rows[n].sampler for n in picking], chosen)
    return dict(zip(picking, tokens))


def _advance(row: Row, token: int, logits: torch.Tensor, eos: set[int]) -> str | None:
    """Record the row's picked token; its finish reason when it is done."""
    row.last = token
    if row.job.logprobs is not None and token not in eos:
        row.scored += token_logprobs(logits[None], [token], row.job.logprobs)
    if token in eos:
        return "stop"
    if row.text.add(token):
        return "stop"
    if len(row.text.tokens) >= row.job.options.max_new_tokens:
        return "length"
    piece = row.text.take_final()
    if piece:
        row.job.emit(_delta(row, piece))
    return None


def _delta(row: Row, piece: str) -> Delta:
    """The piece of text, with the log-probabilities of the tokens not yet sent."""
    tokens, row.unsent = tuple(row.scored[row.unsent :]), len(row.scored)
    return Delta(piece, tokens)


def _finish(row: Row, reason: str) -> None:
    piece = row.text.take_final(finished=True)
    if piece or row.unsent < len(row.scored):
        row.job.emit(_delta(row, piece))
    row.job.emit(
        Finished(
            finish_reason=reason,
            text=row.text.text,
            prompt_tokens=len(row.job.prompt_ids),
            completion_tokens=len(row.text.tokens),
            token_ids=tuple(row.text.tokens),
            tokens=row.scored if row.job.logprobs is not None else None,
            prompt_logprobs=row.prompt_scores,
        )
    )
