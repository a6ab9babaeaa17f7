"""What a task is: how examples become token rows for one model, its loss, and its metrics.

One module per kind (classification, lm, suffix), registered in `softprompt.tasks`; the
trainer and evaluation only call this interface, whatever steers the model
(softprompt.steering).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from softprompt.data import DataSpec, Example
from softprompt.errors import UsageError
from softprompt.models import Backbone
from softprompt.steering.base import Steering


class TaskSettings(BaseModel):
    """The config's `task:` keys every kind reads: what data, which fields, how it splits.
    A kind with keys of its own subclasses this in its module (`Task.settings`)."""

    model_config = ConfigDict(extra="forbid")

    type: str = "classification"
    data: str
    text_field: str = "text"
    text_b_field: str | None = None
    label_field: str = "label"
    template: str = "{text}"
    max_length: int = Field(256, gt=8)
    dev_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = 0
    hf_config: str | None = None
    hf_splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"}
    )
    max_examples: int | None = Field(None, gt=0)

    def recorded(self) -> dict:
        """What an artifact trained on this task records as its task (by default all of it;
        a distillation records the task it was distilled for)."""
        return self.model_dump(mode="json")


class Task(ABC):
    """One task kind for one backbone."""

    settings: ClassVar[type[TaskSettings]] = TaskSettings
    backbone: Backbone

    @classmethod
    @abstractmethod
    def from_config(cls, task_config, backbone: Backbone, prompt_length: int) -> Task:
        """The task for a validated task config; `prompt_length`: input positions the
        steering takes in front of every text (rows are cut so that they fit)."""

    @abstractmethod
    def encode_split(self, examples: list[Example]) -> list:
        """Encode a split once, up front: the items that batches are made of."""

    @abstractmethod
    def item_length(self, item) -> int:
        """Token length of an encoded item (for length bucketing)."""

    @abstractmethod
    def loss(self, steering: Steering, items: list) -> torch.Tensor:
        """The summed loss of a micro-batch of items (the caller divides)."""

    @abstractmethod
    def loss_denominator(self, items: list) -> float:
        """What a batch's summed loss is divided by: examples, or predicted tokens."""

    @abstractmethod
    def evaluate(self, steering: Steering, encoded: list, batch_size: int = 32) -> dict:
        """Metrics over encoded items (dev during training, test in `evaluate`)."""

    def run_items(self, split: str, examples, run_dir, progress: bool = True) -> list:
        """A training run's encoded `split`: by default `encode_split` of `examples()` (the
        split's examples, read on demand); a task that makes its own items (self-study) reads
        its data itself and may keep what it made in `run_dir` (None: keep nothing), showing
        its progress only when `progress`."""
        return self.encode_split(examples())

    def selection_metric(self, best_metric: str) -> str:
        """The dev metric that picks the best prompt, given the config's `best_metric`."""
        return best_metric

    def report(self, steering: Steering, examples: list[Example], **options) -> dict:
        """What `softprompt evaluate` reports on a split: by default its metrics."""
        return self.evaluate(steering, self.encode_split(examples), options.get("batch_size", 32))


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (BOS / [CLS], [SEP])."""
    plain = tokenizer("x", add_special_tokens=False).input_ids
    full = tokenizer("x", add_special_tokens=True).input_ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of item indices, shortest items first (less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def data_spec(task_config) -> DataSpec:
    """The data-reading part of a task config (a self-study corpus of one source reads as
    that source; of several, it names no single data set)."""
    source = task_config.data
    if isinstance(source, list):
        if len(source) != 1:
            raise UsageError(f"task.data lists {len(source)} sources; pass --data (one source)")
        source = source[0]
    return DataSpec(
        source=source,
        text_field=task_config.text_field,
        label_field=task_config.label_field if task_config.type == "classification" else None,
        text_b_field=task_config.text_b_field,
        dev_fraction=task_config.dev_fraction,
        test_fraction=task_config.test_fraction,
        split_seed=task_config.split_seed,
        hf_config=task_config.hf_config,
        hf_splits=tuple(task_config.hf_splits.items()),
        max_examples=task_config.max_examples,
    )
