"""Plain reference implementations that tests compare the fast paths against (test-only code,
kept out of the package)."""

from __future__ import annotations

import torch
from torch import nn

from softprompt.analysis.importance import ablated_variants
from softprompt.steering.forward import as_steering
from softprompt.steering.prefix import keep_cache_when_checkpointing, prefix_cache
from softprompt.tasks.classification import ClassificationTask, EncodedExample


def prefix_forward(
    model: nn.Module,
    keys: torch.Tensor,
    values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits of a (right-padded) batch with the prefix in front; differentiable in the prefix."""
    batch, length = input_ids.shape[0], keys.shape[2]
    if getattr(model, "is_activation_checkpointing", False):
        keep_cache_when_checkpointing(model)
    cache = prefix_cache(model, keys, values, batch, frozen=True)
    ones = torch.ones((batch, length), dtype=attention_mask.dtype, device=attention_mask.device)
    out = model(
        input_ids=input_ids,
        attention_mask=torch.cat([ones, attention_mask], dim=1),
        past_key_values=cache,
        use_cache=True,
    )
    return out.logits


def naive_importance(
    task: ClassificationTask,
    prompt: torch.Tensor,
    encoded: list[EncodedExample],
    mode: str = "zero",
    batch_size: int = 8,
) -> torch.Tensor:
    """The research code's way, for benchmarks: one full evaluation pass per ablated token,
    each row the prompt and text concatenated, full-vocabulary logits at every position.
    Returns the loss importance."""

    def mean_loss(candidate: torch.Tensor) -> float:
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                batch = task.collate(encoded[start : start + batch_size])
                rows = candidate.expand(batch.input_ids.shape[0], -1, -1)  # [prompt; text]
                hidden, offset = prompted_hidden(
                    task.backbone, rows, batch.input_ids, batch.attention_mask
                )
                logits = task.backbone.head_logits(hidden)  # every position, every word
                rows = torch.arange(hidden.shape[0])
                picked = logits[rows, offset + batch.positions[:, 0]]
                scores = torch.log_softmax(picked, dim=-1)[:, task.class_token_ids]
                total += float(task.losses(scores, batch.labels).sum())
        return total / len(encoded)

    base = mean_loss(prompt)
    return torch.tensor([mean_loss(v) - base for v in ablated_variants(prompt.float(), mode)])


@torch.no_grad()
def hf_generate(backbone, texts: list[str], steer, max_new_tokens: int) -> list[str]:
    """Greedy continuations through the model's own `generate` (left-padded batch, the
    steering's parts in front): the independent path the decoder's engine is checked
    against; the texts are cut after the prompts' text, as the decoder's are."""
    from softprompt.decoding.text import drop_cut_character

    tokenizer = backbone.tokenizer
    previous_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous_side
    ids = encoded.input_ids.to(backbone.device)
    mask = encoded.attention_mask.to(backbone.device)
    inputs = generation_inputs(backbone, as_steering(steer), ids, mask)
    output = backbone.model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    if "input_ids" in inputs:  # generate repeats given ids in front of the new tokens
        output = output[:, inputs["input_ids"].shape[1] :]
    # the continuation is the text after the prompt's in the whole sequence's text (as
    # transformers' text-generation pipeline cuts it): a word-level or SentencePiece token
    # keeps the space its decoder writes between it and the prompt
    texts = []
    for prompt, new in zip(encoded.input_ids, output):
        prompt = prompt[prompt != tokenizer.pad_token_id].tolist()
        start = len(tokenizer.decode(prompt, skip_special_tokens=True))
        whole = tokenizer.decode(prompt + new.tolist(), skip_special_tokens=True)
        texts.append(drop_cut_character(whole[start:]))
    return texts


def generation_inputs(backbone, steering, input_ids, attention_mask) -> dict:
    """Keyword arguments for the model's `generate` on left-padded rows under a batch-wide
    steering: its soft prompt in front of the embeddings, or its prefix as the first cached
    positions (then the output repeats `input_ids` in front of the new tokens)."""

    parts = steering.parts()
    rows, device = input_ids.shape[0], input_ids.device
    if parts.keys is not None:
        keys, values = parts.keys.to(device), parts.values.to(device)
        ones = torch.ones((rows, parts.cache_length), dtype=attention_mask.dtype, device=device)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.cat([ones, attention_mask], dim=1),
            "past_key_values": prefix_cache(backbone.model, keys, values, rows),
        }
    embeds = backbone.embed(input_ids)
    if parts.embeddings is None:
        return {"inputs_embeds": embeds, "attention_mask": attention_mask}
    soft = parts.embeddings.to(device=embeds.device, dtype=embeds.dtype)
    soft = soft.unsqueeze(0).expand(rows, -1, -1)
    ones = torch.ones(soft.shape[:2], dtype=attention_mask.dtype, device=embeds.device)
    return {
        "inputs_embeds": torch.cat([soft, embeds], dim=1),
        "attention_mask": torch.cat([ones, attention_mask], dim=1),
    }


def prompted_hidden(backbone, steer, input_ids, attention_mask, read=None):
    """Hidden states of right-padded rows under `steer` (anything `as_steering` takes), and
    the column of each row's first token (a soft prompt's length; 0 after a prefix)."""
    return as_steering(steer).hidden(backbone, input_ids, attention_mask, read)


def reference_pick(options, generator, logits: torch.Tensor, generated: list[int]) -> int:
    """One row's next token as the decoder picked it before its sampler was batched: the bias
    and penalties on this row alone, then transformers' own warpers (temperature, top-k,
    top-p), softmax and `torch.multinomial` with the row's generator; greedy: the argmax."""
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if options.logit_bias:
        ids, bias = zip(*options.logit_bias)
        logits = logits.float().clone()
        logits[list(ids)] += torch.tensor(bias, device=logits.device)
    if (options.presence_penalty or options.frequency_penalty) and generated:
        counts = torch.bincount(torch.tensor(generated), minlength=logits.shape[-1]).float()
        penalty = options.frequency_penalty * counts + options.presence_penalty * (counts > 0)
        logits = logits.float() - penalty
    if options.is_greedy:
        return int(logits.argmax())
    warpers = LogitsProcessorList()
    if options.temperature not in (0, 1.0):
        warpers.append(TemperatureLogitsWarper(options.temperature))
    if options.top_k is not None:
        warpers.append(TopKLogitsWarper(options.top_k))
    if options.top_p is not None and options.top_p < 1.0:
        warpers.append(TopPLogitsWarper(options.top_p))
    scores = warpers(torch.zeros((1, 0), dtype=torch.long), logits.float()[None])
    probs = torch.softmax(scores, dim=-1)[0]
    return int(torch.multinomial(probs, 1, generator=generator))


def current_prompt(module) -> torch.Tensor:
    """The soft prompt a trainable prompt module steers the first model with now: the learned
    matrix for `prompt`, the encoder's output for `p_tuning` and `residual` (not its inputs)."""
    return module.steering(0).embedding
