"""Text generation under any steering (softprompt.steering), through the model's own
`generate`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

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
    samples: list[int] | None = None,
) -> list[str]:
    """Continue each text as given (no template) under `prompt`: a Steering (soft prompt,
    prefix, or a list with one per text), a soft-prompt tensor [L, d], or None.

    Sampling draws each row from its own generator, seeded from (seed, the row's sample number
    in `samples` (default 0), its text): a text's continuation is the same alone or batched
    with any others, in any position. The text ends before a character its last token cut."""
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
    seeds = row_seeds(options.seed, texts, samples or [0] * len(texts))
    kwargs = _generation_kwargs(backbone, options, seeds)
    output = backbone.model.generate(**inputs, **kwargs)
    if "input_ids" in inputs:  # generate repeats given ids in front of the new tokens
        output = output[:, inputs["input_ids"].shape[1] :]
    return [drop_cut_character(t) for t in tokenizer.batch_decode(output, skip_special_tokens=True)]


def _generation_kwargs(backbone: Backbone, options: SamplingOptions, seeds: list[int]) -> dict:
    """The model's `generate` arguments. Sampling is done by `RowSampler` as the last logits
    processor, which leaves one allowed token per row for greedy decoding to pick: HF's own
    sampling draws from the global generator, so a row's draws would depend on its batch."""
    kwargs = {
        "max_new_tokens": options.max_new_tokens,
        "do_sample": False,
        "pad_token_id": backbone.tokenizer.pad_token_id,
    }
    if not options.greedy:
        sampler = RowSampler(options, seeds, backbone.device)
        kwargs["logits_processor"] = LogitsProcessorList([sampler])
    return kwargs


def row_seeds(seed: int, texts: list[str], samples: list[int]) -> list[int]:
    """One generator seed per row, a function of (seed, sample number, text) alone (SHA-256,
    so that it is the same in every process and Python run, unlike `hash`)."""
    seeds = []
    for text, sample in zip(texts, samples):
        digest = hashlib.sha256(f"{seed}\0{sample}\0{text}".encode()).digest()
        seeds.append(int.from_bytes(digest[:8], "little") >> 1)  # a non-negative int64
    return seeds


class RowSampler(LogitsProcessor):
    """Temperature, top-k and top-p as HF applies them, then one token drawn per row from that
    row's own generator; returns scores that allow only the drawn token."""

    def __init__(self, options: SamplingOptions, seeds: list[int], device: torch.device) -> None:
        warpers: list[LogitsProcessor] = []
        if options.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(options.temperature))
        if options.top_k is not None:
            warpers.append(TopKLogitsWarper(options.top_k))
        if options.top_p is not None and options.top_p < 1.0:
            warpers.append(TopPLogitsWarper(options.top_p))
        self.warpers = LogitsProcessorList(warpers)
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1)
        drawn = [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)]
        allowed = torch.full_like(scores, float("-inf"))
        return allowed.scatter_(1, torch.stack(drawn), 0.0)


def drop_cut_character(text: str) -> str:
    """`text` without the U+FFFD replacement characters at its end: what decoding leaves where
    the last byte-level token stopped inside a multi-byte character (an emoji, CJK), a
    character the model did not finish rather than one it wrote."""
    return text.rstrip("\ufffd")


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
