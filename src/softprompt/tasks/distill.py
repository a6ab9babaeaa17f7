"""Distillation of a classification prompt from a teacher pair (old model + old prompt) into a
student pair (new model + the prompt being trained), on unlabelled inputs: what `softprompt
migrate` trains, and what `train` runs from a config with `task.type: distill`.

The objective lives on the label distribution (the verbalizer's probabilities, normalised over
the labels), which does not depend on either tokenizer. Per input, with p the teacher's
distribution, p0 the teacher model's own without the prompt, q the student's and q0 the
student model's own without a prompt (all over the C labels, natural logarithms):

    shift_T = log p - log p0      (what the old prompt does to the old model)
    shift_S = log q - log q0      (what the new prompt does to the new model)
    loss    = (1 - a) KL(t || q) + a KL(softmax(shift_T) || softmax(shift_S))

with a = `shift_weight` (POST, Wang et al. 2025: a plain KL copies the teacher, errors
included; the shift term asks the new prompt to move its model the way the old prompt moved
the old one) and t = p (`reference: teacher`, POST's recipe) or t = softmax(log q0 + shift_T)
(`reference: shifted`: the student's own zero-shot moved by the teacher's shift, so that what the
new model already knows better than the old one is kept) or t = softmax((1 - b) log p + b log q0)
(`reference: ensemble`, b = `own_weight`: the normalised weighted geometric mean, a product of
experts, of the teacher pair and the student model's own zero-shot; two models whose errors
differ, combined without labels, so the student can end above the teacher).

p and p0 are computed once per input by the caller (`softprompt.migration`) and read from the
teacher file (`task.teacher`); q0 is computed once per input here, when the split is encoded.
Inputs are matched to the teacher's rows by a hash of their text, so the data may be split,
shuffled or cut freely. The artifact records the plain classification task (`recorded`), so
`evaluate`, `predict` and `serve` use the migrated prompt like any other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from softprompt.data import Example
from softprompt.errors import DataError, PromptFileError, UsageError
from softprompt.files import read_safetensors, write_safetensors_atomic
from softprompt.models import Backbone
from softprompt.steering.base import NoSteering, Steering
from softprompt.tasks.base import Task, length_batches
from softprompt.tasks.classification import (
    ClassificationSettings,
    ClassificationTask,
    EncodedExample,
    classification_scores,
)

TEACHER_FORMAT = "softprompt-teacher"
DISTILL_KEYS = ("teacher", "shift_weight", "reference", "own_weight", "temperature")
REFERENCES = ("teacher", "shifted", "ensemble")


class DistillSettings(ClassificationSettings):
    """A distillation task's keys: the classification task (template, verbalizer: the
    student's label words), the teacher file, and the objective's settings."""

    type: str = "distill"
    teacher: str
    shift_weight: float = Field(0.5, ge=0.0, le=1.0)
    reference: Literal["teacher", "shifted", "ensemble"] = "teacher"
    own_weight: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0)

    def recorded(self) -> dict:
        """The artifact records the classification task it was distilled for: the migrated
        prompt then evaluates, predicts and serves like any classification prompt."""
        task = self.model_dump(mode="json", exclude=set(DISTILL_KEYS))
        return {**task, "type": "classification"}


def input_key(text: str, text_b: str | None = None) -> str:
    """The key of one input in a teacher file: a hash of its text (and second text)."""
    raw = json.dumps([text, text_b], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(raw).hexdigest()[:24]


@dataclass
class Teacher:
    """The teacher's label distributions, once per input: log p [N, C] (prompted) and
    log p0 [N, C] (its bare model), the labels in order, and where they came from."""

    keys: list[str]
    labels: list[str]
    logprobs: torch.Tensor
    bare: torch.Tensor
    source: dict

    def rows(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.keys)}

    def save(self, path: str | Path) -> Path:
        meta = {
            "format": TEACHER_FORMAT,
            "keys": json.dumps(self.keys),
            "labels": json.dumps(self.labels),
            "source": json.dumps(self.source, sort_keys=True),
        }
        tensors = {"logprobs": self.logprobs.float().contiguous(), "bare": self.bare.float()}
        write_safetensors_atomic(tensors, meta, Path(path))
        return Path(path)


def read_teacher_file(path: str | Path, file_format: str, what: str) -> tuple[dict, dict]:
    """The tensors and header of a teacher file that `softprompt migrate` wrote, its format
    checked (`what` names the kind in the error)."""
    if not Path(path).is_file():
        raise UsageError(
            f"task.teacher: teacher file not found: {path}; `softprompt migrate` writes it"
        )
    tensors, meta = read_safetensors(path)
    if meta.get("format") != file_format:
        raise PromptFileError(f"{path} is not {what} written by softprompt migrate")
    return tensors, meta


def load_teacher(path: str | Path) -> Teacher:
    """A teacher file written by `softprompt migrate` (or `Teacher.save`), checked."""
    tensors, meta = read_teacher_file(path, TEACHER_FORMAT, "a teacher file")
    if "logprobs" not in tensors:
        raise PromptFileError(f"{path} is not a teacher file written by softprompt migrate")
    keys, labels = json.loads(meta["keys"]), json.loads(meta["labels"])
    shape = (len(keys), len(labels))
    if tuple(tensors["logprobs"].shape) != shape or tuple(tensors["bare"].shape) != shape:
        raise PromptFileError(f"{path}: its distributions do not match its keys and labels")
    return Teacher(
        keys, labels, tensors["logprobs"], tensors["bare"], json.loads(meta.get("source", "{}"))
    )


@dataclass
class DistillItem:
    """One input: its student rows, and the three distributions the loss compares against."""

    encoded: EncodedExample
    teacher: torch.Tensor  # log p [C]
    teacher_bare: torch.Tensor  # log p0 [C]
    student_bare: torch.Tensor  # log q0 [C]


class DistillTask(ClassificationTask):
    """The student side of a migration: the classification task on the new model, trained
    against the teacher's cached label distributions (see the module docstring)."""

    settings = DistillSettings

    @classmethod
    def from_config(cls, task_config, backbone: Backbone, prompt_length: int) -> Task:
        task = super().from_config(task_config, backbone, prompt_length)
        task.teacher = load_teacher(task_config.teacher)
        if task.teacher.labels != task.labels:
            raise UsageError(
                f"task.verbalizer has the labels {task.labels} but the teacher's are "
                f"{task.teacher.labels}; give every teacher label a word, in the same order"
            )
        task.shift_weight, task.reference = task_config.shift_weight, task_config.reference
        task.own_weight = task_config.own_weight
        task.temperature = task_config.temperature
        return task

    def encode_split(self, examples: list[Example]) -> list[DistillItem]:
        rows = self.teacher.rows()
        missing = [e for e in examples if input_key(e.text, e.text_b) not in rows]
        if missing:
            raise DataError(
                f"{missing[0].where}: this input has no teacher distribution in the teacher "
                f"file ({len(missing)} inputs lack one); run `softprompt migrate` on this data"
            )
        encoded = [self.encode(e, with_label=False) for e in examples]
        bare = torch.log_softmax(classification_scores(self, NoSteering(), encoded), dim=-1)
        items = []
        for example, enc, q0 in zip(examples, encoded, bare):
            row = rows[input_key(example.text, example.text_b)]
            items.append(DistillItem(enc, self.teacher.logprobs[row], self.teacher.bare[row], q0))
        return items

    def item_length(self, item: DistillItem) -> int:
        return max(len(ids) for ids, _, _ in item.encoded.rows)

    def student_logprobs(self, steering: Steering, items: list[DistillItem]) -> torch.Tensor:
        """log q [B, C]: the student's label distribution under `steering`."""
        scores = self.class_scores(steering, self.collate([i.encoded for i in items]))
        return torch.log_softmax(scores.float(), dim=-1)

    def item_losses(self, log_q: torch.Tensor, items: list[DistillItem]) -> dict:
        """Per-input loss and its two terms (see the module docstring)."""
        device, t = log_q.device, self.temperature
        log_p = torch.stack([i.teacher for i in items]).to(device)
        log_p0 = torch.stack([i.teacher_bare for i in items]).to(device)
        log_q0 = torch.stack([i.student_bare for i in items]).to(device)
        shift_t = log_p - log_p0
        target = distill_target(self.reference, log_p, log_p0, log_q0, self.own_weight)
        kl = _kl(target / t, log_q / t)
        shift_kl = _kl(shift_t / t, (log_q - log_q0) / t)
        loss = (1 - self.shift_weight) * kl + self.shift_weight * shift_kl
        return {"loss": loss, "kl": kl, "shift_kl": shift_kl, "teacher": log_p}

    def loss(self, steering: Steering, items: list[DistillItem]) -> torch.Tensor:
        return self.item_losses(self.student_logprobs(steering, items), items)["loss"].sum()

    def loss_denominator(self, items: list[DistillItem]) -> float:
        return float(len(items))

    @torch.no_grad()
    def evaluate(self, steering: Steering, encoded: list, batch_size: int = 32) -> dict:
        """Agreement with the teacher (same top label) on held-out inputs, the loss and its
        terms; the teacher's own labels stand in for gold labels."""
        lengths = [self.item_length(item) for item in encoded]
        sums = {"loss": 0.0, "kl": 0.0, "shift_kl": 0.0, "agreement": 0.0}
        for batch_ids in length_batches(lengths, batch_size):
            items = [encoded[i] for i in batch_ids]
            log_q = self.student_logprobs(steering, items)
            parts = self.item_losses(log_q, items)
            agree = log_q.argmax(-1) == parts["teacher"].argmax(-1)
            sums["agreement"] += float(agree.float().sum())
            for key in ("loss", "kl", "shift_kl"):
                sums[key] += float(parts[key].sum())
        count = max(len(encoded), 1)
        return {**{k: v / count for k, v in sums.items()}, "examples": len(encoded)}

    def selection_metric(self, best_metric: str) -> str:
        """The held-out distillation loss picks the best prompt: agreement on a few held-out
        inputs moves in steps of 1/N and ties often; the loss is continuous."""
        return "loss"


def distill_target(
    reference: str,
    log_p: torch.Tensor,
    log_p0: torch.Tensor,
    log_q0: torch.Tensor,
    own_weight: float = 0.5,
) -> torch.Tensor:
    """log t [N, C], the KL term's target (module docstring): the teacher's distribution
    (`teacher`), the student model's zero-shot moved by the teacher's shift (`shifted`), or
    the weighted geometric mean of the teacher's and the student model's own zero-shot
    (`ensemble`, weight `own_weight` on the latter), each normalised over the labels."""
    if reference == "teacher":
        return log_p
    if reference == "shifted":
        return torch.log_softmax(log_q0 + log_p - log_p0, dim=-1)
    if reference == "ensemble":
        return torch.log_softmax((1 - own_weight) * log_p + own_weight * log_q0, dim=-1)
    raise UsageError(f"reference {reference!r}: use one of {', '.join(REFERENCES)}")


def _kl(log_target: torch.Tensor, log_model: torch.Tensor) -> torch.Tensor:
    """KL(softmax(log_target) || softmax(log_model)) per row, both given as unnormalised
    log-probabilities (they are normalised here)."""
    target = torch.log_softmax(log_target, dim=-1)
    model = torch.log_softmax(log_model, dim=-1)
    return (target.exp() * (target - model)).sum(-1)
