"""What callers hand the engine: a `Job` (one generation, immutable once submitted; the
engine keeps its mutable state in a `decoding.scheduler.Row`) or a `Call` (other model work)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from softprompt.decoding.events import Event
from softprompt.decoding.options import SamplingOptions
from softprompt.steering.base import Steering


@dataclass(frozen=True, eq=False)
class Job:
    """One generation: the prompt's token ids under a steering, how it is decoded (`seed`: its
    row's generator seed, see `row_seeds`; None: a random one), and where events go.
    `logprobs`: report each generated token's log-probability and this many alternatives
    (None: none); `echo`: also the prompt tokens' (the first one has none).

    `emit(event)` is called from the engine thread with `decoding.events` objects: `Started`,
    then `Delta`s as text becomes final, then `Finished` — or `Failed` at any point.
    `cancelled` is the one thing a caller may set after submitting: the row leaves."""

    steering: Steering
    prompt_ids: list[int]
    options: SamplingOptions
    emit: Callable[[Event], None]
    adapter: str = ""
    seed: int | None = None
    logprobs: int | None = None
    echo: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, eq=False)
class Call:
    """Any other model work (classification): run on the engine thread between steps, one
    call between two steps (so a caller with much work sends it in bounded slices)."""

    run: Callable[[], object]
    done: Callable[[object, BaseException | None], None]
