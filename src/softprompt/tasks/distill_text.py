"""Distillation of a generation prompt or prefix (the `lm` and `suffix` tasks, e.g. the smiley
prefix) from a teacher pair into a student pair: what `softprompt migrate` trains for a
generation artifact, and what `train` runs from a config with `task.type: distill_text`.

The teacher pair (old model + old artifact) has continued each start text once, through the
one decoder (softprompt.migration); the data holds `{"text": start, "continuation": ...}`.
The student learns the continuation given the start:

- **sequence level** (any two tokenizers): the next-token loss on the continuation's tokens
  only (the start is context), in the student's own tokens: the text is what is shared;
- **token level** (`teacher` given: a file of the teacher's top-k next-token log-probabilities
  at every continuation token, possible only where both models share the tokenizer): the
  cross-entropy against the teacher's top-k distribution (renormalised over its k tokens),
  which says how much more than the sampled token: the teacher's alternatives too.

The artifact records the task it was distilled for (`record`: the source artifact's task, a
`suffix` task with its suffix, say), so `evaluate` and `generate` use it as any other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from softprompt.data import Example
from softprompt.errors import ConfigError, DataError
from softprompt.files import write_safetensors_atomic
from softprompt.models import Backbone
from softprompt.steering.base import Steering
from softprompt.steering.forward import as_steering
from softprompt.tasks.base import Task, TaskSettings, length_batches, special_tokens
from softprompt.tasks.distill import input_key, read_teacher_file

TOPK_FORMAT = "softprompt-teacher-topk"


class TextDistillSettings(TaskSettings):
    """A text distillation's keys: where the continuation is, the task to record, and the
    teacher's top-k file for token-level distillation (left out: sequence level)."""

    type: str = "distill_text"
    text_b_field: str | None = "continuation"
    record: dict = Field(default_factory=lambda: {"type": "lm"})
    teacher: str | None = None

    def recorded(self) -> dict:
        """The task the source artifact was trained for (the migrated one serves the same)."""
        return {**self.record, "data": self.record.get("data", self.data)}


@dataclass
class TopK:
    """The teacher's top-k next-token log-probabilities at each continuation token, per input:
    ids and log-probabilities [tokens, k] (both models share the tokenizer)."""

    keys: list[str]
    ids: list[torch.Tensor]
    logprobs: list[torch.Tensor]

    def save(self, path: str | Path) -> Path:
        lengths = [int(t.shape[0]) for t in self.ids]
        meta = {
            "format": TOPK_FORMAT,
            "keys": json.dumps(self.keys),
            "lengths": json.dumps(lengths),
        }
        tensors = {"ids": torch.cat(self.ids).long(), "logprobs": torch.cat(self.logprobs).float()}
        write_safetensors_atomic(tensors, meta, Path(path))
        return Path(path)


def load_topk(path: str | Path) -> TopK:
    """A top-k teacher file written by `softprompt migrate`, split back per input."""
    tensors, meta = read_teacher_file(path, TOPK_FORMAT, "a top-k teacher file")
    lengths = json.loads(meta["lengths"])
    ids = list(torch.split(tensors["ids"], lengths))
    return TopK(json.loads(meta["keys"]), ids, list(torch.split(tensors["logprobs"], lengths)))


@dataclass
class TextItem:
    """One start + continuation in the student's tokens, and the teacher's top-k (or None)."""

    ids: list[int]
    start: int  # tokens before the continuation
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


class TextDistillTask(Task):
    """The student side of a generation migration (see the module docstring)."""

    settings = TextDistillSettings

    def __init__(self, backbone: Backbone, *, max_length: int = 256, prompt_length: int = 0):
        if backbone.kind != "causal":
            raise ConfigError(f"distill_text needs a causal LM; {backbone.name} is a masked LM")
        self.backbone, self.tokenizer = backbone, backbone.tokenizer
        self.window = max_length - prompt_length
        self.specials_before, _ = special_tokens(self.tokenizer)
        self.topk: TopK | None = None

    @classmethod
    def from_config(cls, task_config, backbone: Backbone, prompt_length: int) -> Task:
        task = cls(backbone, max_length=task_config.max_length, prompt_length=prompt_length)
        if task_config.teacher:
            task.topk = load_topk(task_config.teacher)
            task.topk_rows = {key: i for i, key in enumerate(task.topk.keys)}
        return task

    def encode(self, example: Example) -> TextItem:
        """Start and continuation tokenized apart (as generation saw them), cut to the window."""
        if not example.text_b:
            raise DataError(f"{example.where}: no continuation to learn (task.text_b_field)")
        start = (
            self.specials_before + self.tokenizer(example.text, add_special_tokens=False).input_ids
        )
        cont = self.tokenizer(example.text_b, add_special_tokens=False).input_ids
        ids = (start + cont)[: self.window]
        item = TextItem(ids, len(start))
        if self.topk is not None:
            row = self.topk_rows.get(input_key(example.text, example.text_b))
            if row is None:
                raise DataError(f"{example.where}: no top-k teacher row for this input")
            kept = len(ids) - len(start)
            item.top_ids, item.top_logprobs = (
                self.topk.ids[row][:kept],
                self.topk.logprobs[row][:kept],
            )
        return item

    def encode_split(self, examples: list[Example]) -> list[TextItem]:
        items = [self.encode(e) for e in examples]
        items = [i for i in items if len(i.ids) > i.start and i.start > 0]
        if not items:
            raise DataError("distill_text found no start with a continuation that fits the window")
        return items

    def item_length(self, item: TextItem) -> int:
        return len(item.ids)

    def _predictions(self, steering: Steering, items: list[TextItem]):
        """Hidden states at every position that predicts a continuation token, [P, d], with the
        rows' targets [P] and each position's item index [P]."""
        width = max(len(i.ids) for i in items)
        ids = torch.full((len(items), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, item in enumerate(items):
            ids[r, : len(item.ids)] = torch.tensor(item.ids)
            mask[r, : len(item.ids)] = 1
        hidden, offset = as_steering(steering).hidden(self.backbone, ids, mask)
        rows = [r for r, i in enumerate(items) for _ in range(i.start, len(i.ids))]
        cols = [p - 1 for i in items for p in range(i.start, len(i.ids))]
        targets = torch.tensor([t for i in items for t in i.ids[i.start :]], device=hidden.device)
        h = hidden[
            torch.tensor(rows, device=hidden.device),
            offset + torch.tensor(cols, device=hidden.device),
        ]
        return h, targets

    def loss(self, steering: Steering, items: list[TextItem]) -> torch.Tensor:
        h, targets = self._predictions(steering, items)
        logits = self.backbone.head_logits(h)
        if self.topk is None:
            return F.cross_entropy(logits, targets, reduction="sum")
        top_ids = torch.cat([i.top_ids for i in items]).to(logits.device)
        teacher = torch.softmax(torch.cat([i.top_logprobs for i in items]).to(logits.device), -1)
        student = torch.log_softmax(logits.float(), -1).gather(1, top_ids)
        return -(teacher * student).sum()

    def loss_denominator(self, items: list[TextItem]) -> float:
        return float(sum(len(i.ids) - i.start for i in items))

    @torch.no_grad()
    def evaluate(self, steering: Steering, encoded: list, batch_size: int = 32) -> dict:
        """The loss per continuation token on held-out inputs and the perplexity of the
        teacher's continuations under the student (lower: closer to the teacher)."""
        total, nll, count = 0.0, 0.0, 0
        for batch_ids in length_batches([len(i.ids) for i in encoded], batch_size):
            items = [encoded[i] for i in batch_ids]
            total += float(self.loss(steering, items))
            h, targets = self._predictions(steering, items)
            nll += float(F.cross_entropy(self.backbone.head_logits(h), targets, reduction="sum"))
            count += int(targets.shape[0])
        count = max(count, 1)
        perplexity = math.exp(min(nll / count, 50.0))
        return {"loss": total / count, "perplexity": perplexity, "tokens": count}

    def selection_metric(self, best_metric: str) -> str:
        return "loss"
