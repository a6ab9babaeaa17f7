"""Text generation with a soft prompt (or none), through the model's own `generate`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softprompt.backbones import Backbone
from softprompt.errors import ModelError, UsageError


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
    prompt: torch.Tensor | None = None,
    options: SamplingOptions | None = None,
) -> list[str]:
    """Continue each text as given (no template); the soft prompt, if any, goes first."""
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
    embeds = backbone.embed(input_ids)
    if prompt is not None:
        soft = prompt.to(device=device, dtype=embeds.dtype).unsqueeze(0)
        soft = soft.expand(len(texts), -1, -1)
        embeds = torch.cat([soft, embeds], dim=1)
        ones = torch.ones(soft.shape[:2], dtype=attention_mask.dtype, device=device)
        attention_mask = torch.cat([ones, attention_mask], dim=1)
    sampling = {}
    if not options.greedy:
        sampling = {"temperature": options.temperature}
        sampling["top_k"] = options.top_k if options.top_k is not None else 0
        if options.top_p is not None:
            sampling["top_p"] = options.top_p
    torch.manual_seed(options.seed)
    output = backbone.model.generate(
        inputs_embeds=embeds,
        attention_mask=attention_mask,
        max_new_tokens=options.max_new_tokens,
        do_sample=not options.greedy,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    return tokenizer.batch_decode(output, skip_special_tokens=True)
