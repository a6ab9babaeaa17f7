"""What the engine tells a request's caller, as typed events (sent through the job's `emit`,
from the engine thread): `Started` once its prompt is prefilled, `Delta` as text becomes
final, then `Finished` or `Failed`."""

from __future__ import annotations

from dataclasses import dataclass

from softprompt.decoding.logprobs import TokenLogprob


@dataclass(frozen=True)
class Started:
    """The prompt is in the cache; with `echo`, its tokens' log-probabilities (the first token
    has none), else None."""

    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class Delta:
    """Text that became final, and the log-probabilities of the tokens that made it (when the
    job asked for them)."""

    text: str
    tokens: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The row is done: why (`stop`, `length`), its whole text, the token counts, the generated
    token ids (what self-study and distillation learn, exact where re-tokenizing the text would
    not be), every generated token's log-probability (None unless asked) and the echoed
    prompt's."""

    finish_reason: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...] = ()
    tokens: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class Failed:
    """The row could not run (its steering does not fit, the step's forward failed)."""

    error: BaseException


Event = Started | Delta | Finished | Failed
