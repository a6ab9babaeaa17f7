"""Text generation under any steering (softprompt.steering), through the model's own
`generate`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.errors import ModelError, UsageError
from softprompt.models.backbone import Backbone
from softprompt.steering.forward import SteeringLike, as_steering


@dataclass(frozen=True)
class SamplingOptions:
    """Greedy decoding, or sampling with temperature / top-k / top-p."""

    max_new_tokens: int = 40
    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError("--max-new-tokens must be at least 1")
        if self.temperature <= 0:
            raise UsageError(
                "--temperature must be above 0 (use --greedy for deterministic output)"
            )
        if self.top_k is not None and self.top_k < 1:
            raise UsageError("--top-k must be at least 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError("--top-p must be in (0, 1]")


@torch.no_grad()
def generate(
    backbone: Backbone,
    texts: list[str],
    prompt: SteeringLike = None,
    options: SamplingOptions | None = None,
) -> list[str]:
    """Continue each text as given (no template) under `prompt`: a Steering (soft prompt,
    prefix, or a list with one per text), a soft-prompt tensor [L, d], or None."""
    options = options or SamplingOptions()
    options.check()
    if backbone.kind != "causal":
        raise ModelError(f"generate needs a causal LM; {backbone.name} is a masked LM")
    if not texts:
        raise UsageError("give at least one --text to continue")
    tokenizer = backbone.tokenizer
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous_side
    device = backbone.device
    input_ids = encoded.input_ids.to(device)
    attention_mask = encoded.attention_mask.to(device)
    inputs = as_steering(prompt).generation_inputs(backbone, input_ids, attention_mask)
    torch.manual_seed(options.seed)
    output = backbone.model.generate(**inputs, **_generation_kwargs(backbone, options))
    if "input_ids" in inputs:  # generate repeats given ids in front of the new tokens
        output = output[:, inputs["input_ids"].shape[1] :]
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def _generation_kwargs(backbone: Backbone, options: SamplingOptions) -> dict:
    kwargs = {
        "max_new_tokens": options.max_new_tokens,
        "do_sample": not options.greedy,
        "pad_token_id": backbone.tokenizer.pad_token_id,
    }
    if not options.greedy:
        kwargs["temperature"] = options.temperature
        kwargs["top_k"] = options.top_k if options.top_k is not None else 0
        if options.top_p is not None:
            kwargs["top_p"] = options.top_p
    return kwargs


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
    steered = generate(backbone, repeated, prompt, options)
    key = "generated" if prompt is None else "with_prompt"
    if not compare:
        return [{"text": t, key: g} for t, g in zip(repeated, steered)]
    bare = generate(backbone, repeated, None, options)
    return [{"text": t, key: g, "without_prompt": b} for t, g, b in zip(repeated, steered, bare)]
