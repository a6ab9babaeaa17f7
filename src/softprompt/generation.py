"""Text generation under any steering (softprompt.steering): the texts as rows of the one
decoder (`softprompt.decoding`), all joining at its first step, exactly as the server decodes a
request."""

from __future__ import annotations

import torch

from softprompt.decoding.engine import Engine, Failed, Finished, Job
from softprompt.decoding.options import SamplingOptions, row_seeds
from softprompt.errors import ModelError, UsageError
from softprompt.models import Backbone
from softprompt.steering.base import Steering
from softprompt.steering.forward import SteeringLike, as_steering

__all__ = ["SamplingOptions", "generate", "generate_samples"]


@torch.no_grad()
def generate(
    backbone: Backbone,
    texts: list[str],
    prompt: SteeringLike = None,
    options: SamplingOptions | None = None,
    samples: list[int] | None = None,
) -> list[str]:
    """Continue each text as given (no template) under `prompt`: a Steering (soft prompt,
    prefix), a list with one per text, a soft-prompt tensor [L, d], or None.

    Sampling draws each row from its own generator, seeded from (seed, the row's sample number
    in `samples` (default 0), its text): a text's continuation is the same alone or batched
    with any others, in any position, and the same as the server's for that request. The text
    ends before a character its last token cut, and before the first of `options.stop`."""
    options = options or SamplingOptions()
    options.check()
    if backbone.kind != "causal":
        raise ModelError(f"generate needs a causal LM; {backbone.name} is a masked LM")
    if not texts:
        raise UsageError("give at least one --text to continue")
    steerings = _row_steerings(prompt, len(texts))
    seeds = row_seeds(options.seed, texts, samples or [0] * len(texts))
    if options.seed is None:
        seeds = [None] * len(texts)
    results: list[object] = [None] * len(texts)
    jobs = []
    for index, (text, steer, seed) in enumerate(zip(texts, steerings, seeds)):

        def emit(event, index=index) -> None:
            if isinstance(event, Finished | Failed):
                results[index] = event

        ids = backbone.tokenizer(text).input_ids
        jobs.append(Job(steer, ids, options, emit, seed=seed))
    Engine(backbone, max_batch=len(jobs), queue_size=1).run_jobs(jobs)
    failed = [r.error for r in results if isinstance(r, Failed)]
    if failed:
        raise failed[0]
    return [r.text for r in results]


def _row_steerings(prompt: SteeringLike, rows: int) -> list[Steering]:
    """One batch-wide steering per row: the same one for every row, or the list's."""
    if isinstance(prompt, list):
        if len(prompt) != rows:
            raise UsageError(f"{len(prompt)} steerings given for {rows} texts; give one per text")
        return [as_steering(p) for p in prompt]
    return [as_steering(prompt)] * rows


def generate_samples(
    backbone: Backbone,
    texts: list[str],
    prompt: SteeringLike = None,
    options: SamplingOptions | None = None,
    *,
    num_samples: int = 1,
    compare: bool = False,
) -> list[dict[str, str]]:
    """Each text continued `num_samples` times (each sample drawn separately), one row per
    sample: {"text", "with_prompt"} ({"text", "generated"} without a prompt), and with `compare`
    also "without_prompt", the bare model's continuation under the same options and seed, to
    show what the prompt changes."""
    options = options or SamplingOptions()
    if compare and prompt is None:
        raise UsageError("--compare needs a PROMPT to compare against the bare model")
    if num_samples < 1:
        raise UsageError("--num-samples must be at least 1")
    if num_samples > 1 and options.greedy:
        raise UsageError("--num-samples needs sampling; leave out --greedy")
    repeated = [text for text in texts for _ in range(num_samples)]
    samples = [k for _ in texts for k in range(num_samples)]
    steered = generate(backbone, repeated, prompt, options, samples)
    key = "generated" if prompt is None else "with_prompt"
    if not compare:
        return [{"text": t, key: g} for t, g in zip(repeated, steered)]
    bare = generate(backbone, repeated, None, options, samples)
    return [{"text": t, key: g, "without_prompt": b} for t, g, b in zip(repeated, steered, bare)]
