"""A generation prompt or prefix (the `lm` and `suffix` tasks) migrated to another model: the
teacher pair continues the start of every sentence of the unlabelled texts once (seeded,
through the one decoder, in batches), and the student learns those continuations through the
`distill_text` task. Where both models share the tokenizer, the teacher's top-k next-token
log-probabilities at every continuation token are kept too and the student is trained on them
(token level); otherwise on the continuation's text (sequence level). The summary says which.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from softprompt.data import Example
from softprompt.decoding.options import SamplingOptions
from softprompt.files import atomic_text_file
from softprompt.generation import generate
from softprompt.models import Backbone
from softprompt.steering.forward import as_steering
from softprompt.tasks.base import special_tokens
from softprompt.tasks.distill import input_key
from softprompt.tasks.distill_text import TopK
from softprompt.tasks.suffix import sentence_starts

INPUTS, TOPK = "inputs.jsonl", "teacher-topk.safetensors"
START_WORDS = 4  # a start: a sentence's first words (the suffix rate is measured on such starts)
TOP_K = 20  # the teacher's alternatives kept per token (the Cartridges recipe's 20)


def starts(examples: list[Example]) -> list[str]:
    """The start of every sentence of every input, by the rule the suffix rate is measured
    with (its first START_WORDS words; in a language written without spaces, its first
    characters), or the input itself where it has no such sentence."""
    found = []
    for example in examples:
        found += sentence_starts([example.text], words=START_WORDS) or [example.text.strip()]
    return list(dict.fromkeys(found))


def shared_tokenizer(source: Backbone, target: Backbone) -> bool:
    """Whether both models cut text into the same tokens (token-level distillation then)."""
    return source.tokenizer.get_vocab() == target.tokenizer.get_vocab()


def teacher_continuations(session, texts: list[str], options: dict) -> list[str]:
    """The teacher pair's continuation of each start, seeded, in batches of 16."""
    sampling = SamplingOptions(
        max_new_tokens=options["max_new_tokens"],
        temperature=options["temperature"],
        seed=options["seed"],
    )
    out = []
    for first in range(0, len(texts), 16):
        out += generate(session.backbone, texts[first : first + 16], session.steering, sampling)
    return out


@torch.no_grad()
def teacher_topk(session, pairs: list[tuple[str, str]]) -> TopK:
    """The teacher's top-k next-token log-probabilities at every continuation token."""
    backbone, steering = session.backbone, as_steering(session.steering)
    before, _ = special_tokens(backbone.tokenizer)
    keys, ids, logprobs = [], [], []
    for text, cont in pairs:
        start = before + backbone.tokenizer(text, add_special_tokens=False).input_ids
        tokens = start + backbone.tokenizer(cont, add_special_tokens=False).input_ids
        row = torch.tensor([tokens])
        hidden, offset = steering.hidden(backbone, row, torch.ones_like(row))
        h = hidden[0, offset + len(start) - 1 : offset + len(tokens) - 1]
        top = torch.log_softmax(backbone.head_logits(h).float(), -1).topk(TOP_K, dim=-1)
        keys.append(input_key(text, cont))
        ids.append(top.indices.cpu())
        logprobs.append(top.values.cpu())
    return TopK(keys, ids, logprobs)


def write_text_inputs(run_dir: Path, session, target: Backbone, examples, options) -> dict:
    """inputs.jsonl (starts and the teacher's continuations) and, for a shared tokenizer, the
    top-k teacher file; returns what the summary says about the level and why."""
    texts = starts(examples)
    continuations = teacher_continuations(session, texts, options)
    pairs = [(t, c) for t, c in zip(texts, continuations) if c.strip()]
    with atomic_text_file(run_dir / INPUTS) as handle:
        for text, cont in pairs:
            handle.write(json.dumps({"text": text, "continuation": cont}, ensure_ascii=False))
            handle.write("\n")
    if shared_tokenizer(session.backbone, target):
        teacher_topk(session, pairs).save(run_dir / TOPK)
        why = "both models share the tokenizer"
        return {"level": f"token (teacher's top-{TOP_K})", "why": why, "starts": len(pairs)}
    why = "the tokenizers differ, so only the text is shared"
    return {"level": "sequence", "why": why, "starts": len(pairs)}
