"""Classification as language modelling at a label slot: a causal LM predicts the label word
after the template, a masked LM fills [MASK] tokens at the slot. Only the hidden states at the
label positions go through the LM head, and with the verbalizer loss only the label words'
rows of it. Metrics: loss, accuracy, macro-F1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator, model_validator

from softprompt.data import Example
from softprompt.errors import ConfigError, DataError, ModelError
from softprompt.models import Backbone
from softprompt.steering.base import Steering
from softprompt.steering.forward import SteeringLike, as_steering
from softprompt.tasks.base import Task, TaskSettings, length_batches, special_tokens

PLACEHOLDER = re.compile(r"\{(\w*)\}")
KNOWN_PLACEHOLDERS = ("text", "text_b", "label")


def check_template(template: str, needs_text_b: bool = False) -> None:
    """Fail early on templates that cannot be rendered as intended."""
    names = PLACEHOLDER.findall(template)
    unknown = sorted({n for n in names if n not in KNOWN_PLACEHOLDERS})
    if unknown:
        raise ConfigError(
            f"template has unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
            "use {text}, {text_b} and optionally {label}"
        )
    if "text" not in names:
        raise ConfigError(f"template {template!r} has no {{text}} placeholder for the input text")
    for name in KNOWN_PLACEHOLDERS:
        if names.count(name) > 1:
            raise ConfigError(f"template uses {{{name}}} more than once")
    if needs_text_b and "text_b" not in names:
        raise ConfigError("task.text_b_field is set but the template has no {text_b} placeholder")


def _fill(template: str, text: str, text_b: str | None) -> str:
    """The template with its {text} and {text_b} filled in, in one pass: braces in the texts
    themselves (a text that says "{text_b}") stay as they are."""
    values = {"text": text, "text_b": text_b or ""}
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


class ClassificationSettings(TaskSettings):
    """A classification task's keys: the verbalizer (label: word) and the loss over it."""

    verbalizer: dict[str, str] | None = None
    loss: Literal["verbalizer", "vocab"] = "verbalizer"

    @field_validator("verbalizer", mode="before")
    @classmethod
    def _labels_as_strings(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(label): word for label, word in value.items()}
        return value

    @model_validator(mode="after")
    def _needs_verbalizer(self) -> ClassificationSettings:
        if not self.verbalizer:
            raise ValueError("a classification task needs a verbalizer (label: word)")
        empty = [label for label, word in self.verbalizer.items() if not word.strip()]
        if empty:
            raise ValueError(f"verbalizer words must not be empty (labels: {empty})")
        return self


@dataclass
class EncodedExample:
    """Token rows of one example: one row if all label words are one token, else one per class."""

    rows: list[tuple[list[int], list[int], list[int]]]  # (input_ids, positions, target_ids)
    label: int


@dataclass
class ClassBatch:
    """A padded batch of classification rows, ready for the model."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    positions: torch.Tensor  # [N, K] label positions (token coordinates, no prompt)
    targets: torch.Tensor  # [N, K] label-word token ids (shared mode: [N, C] at one position)
    target_mask: torch.Tensor  # [N, K]
    row_example: torch.Tensor  # [N]
    row_class: torch.Tensor  # [N]
    labels: torch.Tensor  # [B]
    shared: bool

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


class ClassificationTask(Task):
    """Template + verbalizer classification for one backbone."""

    settings = ClassificationSettings

    def __init__(
        self,
        backbone: Backbone,
        template: str,
        verbalizer: dict[str, str],
        *,
        loss: str = "verbalizer",
        max_length: int = 256,
        prompt_length: int = 0,
        needs_text_b: bool = False,
    ) -> None:
        check_template(template, needs_text_b)
        if not verbalizer:
            raise ConfigError("a classification task needs a verbalizer (label: word)")
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.labels = list(verbalizer)
        self.verbalizer = dict(verbalizer)
        self.loss_kind = loss
        self.max_length = max_length
        self.prompt_length = prompt_length
        before, _, after = template.partition("{label}")
        if backbone.kind == "causal" and after.strip():
            raise ConfigError("for a causal LM, {label} must end the template (or be left out)")
        self.before, self.after = before, after
        self.word_ids = [self._content_ids(word) for word in verbalizer.values()]
        for label, ids in zip(self.labels, self.word_ids):
            if not ids:
                raise ConfigError(f"verbalizer word for {label!r} has no tokens")
        self._check_distinct_words()
        if backbone.kind == "masked" and self.tokenizer.mask_token_id is None:
            raise ModelError(f"model {backbone.name} has no mask token; a masked task needs one")
        self.shared = all(len(ids) == 1 for ids in self.word_ids)
        self.class_token_ids = torch.tensor([ids[0] for ids in self.word_ids])
        self.specials_before, self.specials_after = special_tokens(self.tokenizer)
        if backbone.kind == "causal":
            self.specials_after = []

    def _check_distinct_words(self) -> None:
        """Refuse two labels whose words are the same, or tokenize to the same tokens: their
        scores would always be equal, so the task could never tell the labels apart (training
        would sit at loss ln 2 for two labels)."""
        seen: dict[tuple[int, ...], str] = {}
        for label, ids in zip(self.labels, self.word_ids):
            other = seen.setdefault(tuple(ids), label)
            if other == label:
                continue
            first, word = self.verbalizer[other], self.verbalizer[label]
            if first == word:
                raise ConfigError(
                    f"verbalizer labels {other!r} and {label!r} have the same word {word!r}; "
                    "give each label a word of its own"
                )
            tokens = " ".join(self.tokenizer.convert_ids_to_tokens(ids))
            raise ConfigError(
                f"verbalizer words {first!r} ({other!r}) and {word!r} ({label!r}) are the same "
                f"token(s) {tokens!r} for model {self.backbone.name}; choose label words this "
                "model tokenizes differently"
            )

    def _head_ids(self, text: str) -> list[int]:
        """The tokens of the rendered text before the label slot. A causal LM predicts the
        label word from the position before it, so for a model that adds no start token (no
        BOS) an empty text becomes its BOS or EOS token (GPT-2's start of text)."""
        ids = self._content_ids(text)
        if ids or self.specials_before or self.backbone.kind != "causal":
            return ids
        start = self.tokenizer.bos_token_id
        start = self.tokenizer.eos_token_id if start is None else start
        return [start] if start is not None else []

    def _content_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def label_index(self, example: Example) -> int:
        if example.label not in self.verbalizer:
            raise DataError(
                f"{example.where}: label {example.label!r} is not in the verbalizer "
                f"({', '.join(self.labels)}); add it or fix the data"
            )
        return self.labels.index(example.label)

    def encode(self, example: Example, with_label: bool = True) -> EncodedExample:
        """Token rows for one example, the text truncated so prompt and label slot fit."""
        label = self.label_index(example) if with_label else -1
        words = self.word_ids if not self.shared else [self.word_ids[0]]
        longest = max(len(ids) for ids in words)
        text, text_b = example.text, example.text_b
        for _ in range(6):
            before = self._head_ids(_fill(self.before, text, text_b))
            after = self._content_ids(_fill(self.after, text, text_b))
            fixed = len(self.specials_before) + len(self.specials_after) + len(after)
            total = self.prompt_length + fixed + len(before) + longest
            excess = total - self.max_length
            if excess <= 0:
                break
            text, text_b = self._shorten(text, text_b, excess, example)
        else:
            raise DataError(f"{example.where}: cannot fit the text into max_length")
        if self.backbone.kind == "causal" and not (self.specials_before or before):
            raise DataError(
                f"{example.where}: the text is empty and the model adds no start token, so "
                "nothing comes before the label; put words before {text} in the template"
            )
        rows = [self._row(before, after, ids) for ids in words]
        if self.shared:
            ids, positions, _ = rows[0]
            rows = [(ids, positions, self.class_token_ids.tolist())]
        return EncodedExample(rows=rows, label=label)

    def _shorten(self, text: str, text_b: str | None, excess: int, example: Example):
        """Drop `excess` tokens (plus a margin) from the longer of the two texts."""
        target_b = text_b is not None and len(text_b) > len(text)
        ids = self._content_ids(text_b if target_b else text)
        if len(ids) <= 1:
            raise DataError(
                f"{example.where}: the template, prompt and label need more than max_length "
                f"({self.max_length}) tokens; raise task.max_length or shorten the template"
            )
        keep = max(1, len(ids) - excess - 2)
        shorter = self.tokenizer.decode(ids[:keep])
        return (text, shorter) if target_b else (shorter, text_b)

    def _row(self, before: list[int], after: list[int], word: list[int]):
        if self.backbone.kind == "causal":
            ids = self.specials_before + before + word[:-1]
            start = len(self.specials_before) + len(before) - 1
            positions = list(range(start, start + len(word)))
        else:
            mask = [self.tokenizer.mask_token_id] * len(word)
            head = self.specials_before + before
            ids = head + mask + after + self.specials_after
            positions = list(range(len(head), len(head) + len(word)))
        return ids, positions, list(word)

    def collate(self, encoded: list[EncodedExample]) -> ClassBatch:
        rows = [(row, i, c) for i, enc in enumerate(encoded) for c, row in enumerate(enc.rows)]
        width = max(len(ids) for (ids, _, _), _, _ in rows)
        depth = max(len(t) for (_, _, t), _, _ in rows)
        pad = self.tokenizer.pad_token_id
        n = len(rows)
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        positions = torch.zeros((n, depth if not self.shared else 1), dtype=torch.long)
        targets = torch.zeros((n, depth), dtype=torch.long)
        target_mask = torch.zeros((n, depth), dtype=torch.bool)
        for r, ((ids, pos, tgt), _, _) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
            positions[r, : len(pos)] = torch.tensor(pos)
            targets[r, : len(tgt)] = torch.tensor(tgt)
            target_mask[r, : len(tgt)] = True
        return ClassBatch(
            input_ids=input_ids,
            attention_mask=mask,
            positions=positions,
            targets=targets,
            target_mask=target_mask,
            row_example=torch.tensor([i for _, i, _ in rows]),
            row_class=torch.tensor([c for _, _, c in rows]),
            labels=torch.tensor([enc.label for enc in encoded]),
            shared=self.shared,
        )

    def class_scores(
        self, steer: SteeringLike, batch: ClassBatch, full_vocab: bool | None = None
    ) -> torch.Tensor:
        """Per-class scores [B, C]: label-word log-probabilities (full vocabulary), or in the
        one-token verbalizer case with `full_vocab=False`, the label words' raw logits.

        `steer`: what steers the model (softprompt.steering); a per-row steering has one row
        per example (a soft prompt [B, L, d], say)."""
        if full_vocab is None:
            full_vocab = self.loss_kind == "vocab"
        steering = as_steering(steer).select(batch.row_example)
        hidden, offset = steering.hidden(
            self.backbone, batch.input_ids, batch.attention_mask, read=batch.positions
        )
        device = hidden.device
        rows = torch.arange(hidden.shape[0], device=device)
        if batch.shared:
            h = hidden[rows, offset + batch.positions[:, 0].to(device)]
            class_ids = self.class_token_ids.to(device)
            if full_vocab:
                return self.backbone.vocab_logprobs(h, class_ids.expand(h.shape[0], -1))
            return self.backbone.head_logits(h, class_ids)
        h = hidden[rows[:, None], offset + batch.positions.to(device)]
        targets = batch.targets.to(device)[..., None]
        token_logp = self.backbone.vocab_logprobs(h, targets).squeeze(-1)
        row_scores = (token_logp * batch.target_mask.to(device)).sum(-1)
        scores = torch.full((batch.size, len(self.labels)), float("-inf"), device=device)
        scores[batch.row_example.to(device), batch.row_class.to(device)] = row_scores
        return scores

    def losses(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example loss: cross-entropy over the labels, or the label word's full-vocabulary
        negative log-likelihood (the paper's loss)."""
        labels = labels.to(scores.device)
        if self.loss_kind == "vocab":
            return -scores.gather(1, labels[:, None]).squeeze(1)
        return F.cross_entropy(scores, labels, reduction="none")

    @classmethod
    def from_config(cls, task_config, backbone: Backbone, prompt_length: int) -> Task:
        return cls(
            backbone,
            task_config.template,
            task_config.verbalizer,
            loss=task_config.loss,
            max_length=task_config.max_length,
            prompt_length=prompt_length,
            needs_text_b=task_config.text_b_field is not None,
        )

    def encode_split(self, examples: list[Example]) -> list[EncodedExample]:
        return [self.encode(example) for example in examples]

    def item_length(self, item: EncodedExample) -> int:
        return max(len(ids) for ids, _, _ in item.rows)

    def loss(self, steering: Steering, items: list[EncodedExample]) -> torch.Tensor:
        batch = self.collate(items)
        return self.losses(self.class_scores(steering, batch), batch.labels).sum()

    def loss_denominator(self, items: list[EncodedExample]) -> float:
        return float(len(items))

    def evaluate(self, steering: Steering, encoded: list, batch_size: int = 32) -> dict:
        scores = classification_scores(self, steering, encoded, batch_size)
        labels = torch.tensor([enc.label for enc in encoded])
        return classification_metrics(self, scores, labels)


@torch.no_grad()
def classification_scores(
    task: ClassificationTask,
    prompt: SteeringLike,
    encoded: list[EncodedExample],
    batch_size: int = 32,
    on_batch: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """Class scores [N, C] for every encoded example, in input order, in length-sorted batches
    of `batch_size`; `on_batch(n)` is told the examples of each batch done (for progress)."""
    lengths = [max(len(ids) for ids, _, _ in enc.rows) for enc in encoded]
    scores = torch.empty((len(encoded), len(task.labels)))
    for batch_ids in length_batches(lengths, batch_size):
        batch = task.collate([encoded[i] for i in batch_ids])
        scores[batch_ids] = task.class_scores(prompt, batch).float().cpu()
        if on_batch is not None:
            on_batch(len(batch_ids))
    return scores


def classification_metrics(
    task: ClassificationTask, scores: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Loss (the task's loss), accuracy and macro-F1 over all labels of the verbalizer."""
    from sklearn.metrics import f1_score  # here: its import costs ~2 s that serving never needs

    predictions = scores.argmax(dim=1)
    return {
        "loss": float(task.losses(scores, labels).mean()),
        "accuracy": float((predictions == labels).float().mean()),
        "macro_f1": float(
            f1_score(
                labels.numpy(),
                predictions.numpy(),
                labels=list(range(len(task.labels))),
                average="macro",
                zero_division=0,
            )
        ),
        "examples": int(labels.shape[0]),
    }
