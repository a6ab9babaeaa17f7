"""Metrics of a prompt (or the bare model) on a data split: loss, accuracy, macro-F1, perplexity."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pydantic import ValidationError
from sklearn.metrics import f1_score

from softprompt.config import TaskConfig, describe_error, load_config
from softprompt.data import Example, load_split
from softprompt.errors import UsageError
from softprompt.methods.prefix import SavedPrefix, load_artifact
from softprompt.methods.prompt import SoftPrompt
from softprompt.models.backbone import DEFAULT_MODEL, Backbone, as_backbone
from softprompt.tasks import (
    ClassificationTask,
    EncodedExample,
    LanguageModelingTask,
    build_task,
    data_spec,
    encode_examples,
)


def _length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def classification_scores(
    task: ClassificationTask,
    prompt: torch.Tensor | None,
    encoded: list[EncodedExample],
    batch_size: int = 32,
) -> torch.Tensor:
    """Class scores [N, C] for every encoded example, in input order."""
    lengths = [max(len(ids) for ids, _, _ in enc.rows) for enc in encoded]
    scores = torch.empty((len(encoded), len(task.labels)))
    for batch_ids in _length_batches(lengths, batch_size):
        batch = task.collate([encoded[i] for i in batch_ids])
        scores[batch_ids] = task.class_scores(prompt, batch).float().cpu()
    return scores


def classification_metrics(
    task: ClassificationTask, scores: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Loss (the task's loss), accuracy and macro-F1 over all labels of the verbalizer."""
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


def evaluate_classification(
    task: ClassificationTask,
    prompt: torch.Tensor | None,
    encoded: list[EncodedExample],
    batch_size: int = 32,
) -> dict[str, float]:
    scores = classification_scores(task, prompt, encoded, batch_size)
    labels = torch.tensor([enc.label for enc in encoded])
    return classification_metrics(task, scores, labels)


@torch.no_grad()
def evaluate_lm(
    task: LanguageModelingTask,
    prompt: torch.Tensor | None,
    windows: list[list[int]],
    batch_size: int = 16,
) -> dict[str, float]:
    """Mean next-token loss and perplexity over all windows."""
    total, count = 0.0, 0
    for batch_ids in _length_batches([len(w) for w in windows], batch_size):
        nll, tokens = task.token_losses(prompt, task.collate([windows[i] for i in batch_ids]))
        total += float(nll)
        count += tokens
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}


def evaluate_task(task, prompt: torch.Tensor | None, encoded: list, batch_size: int = 32) -> dict:
    """Metrics of either task kind."""
    if isinstance(task, ClassificationTask):
        return evaluate_classification(task, prompt, encoded, batch_size)
    return evaluate_lm(task, prompt, encoded, batch_size)


def _as_prompt(prompt) -> SoftPrompt | SavedPrefix | None:
    if prompt is None or isinstance(prompt, (SoftPrompt, SavedPrefix)):
        return prompt
    return load_artifact(prompt)


def steering(artifact, backbone: Backbone, source: str):
    """Check the artifact fits the model; returns what to steer with and the input positions
    it takes (a soft prompt's length; a prefix lives in the cache)."""
    if artifact is None:
        return None, 0
    if isinstance(artifact, SavedPrefix):
        artifact.check_fits(backbone.model, backbone.name, source=source)
        return artifact.kv, 0
    return artifact.embedding_for(backbone.hidden_size, backbone.name, source), artifact.length


def resolve_task(
    prompt: SoftPrompt | None,
    data: str | None = None,
    *,
    config: str | Path | None = None,
    **overrides,
) -> TaskConfig:
    """The task to evaluate on: the prompt's recorded task, then a config file's task section,
    then explicit overrides (template=..., verbalizer=..., data=...), later ones winning."""
    raw: dict = dict(prompt.task) if prompt is not None and prompt.task else {}
    raw.pop("max_examples", None)  # a training-time limit, not part of the task
    if config is not None:
        raw.update(load_config(config).task.model_dump(exclude_unset=True))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if data is not None:
        raw["data"] = data
    raw.setdefault("data", "")
    try:
        return TaskConfig.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(f"task: {describe_error(exc, TaskConfig)}") from exc


def evaluate(
    prompt: str | Path | SoftPrompt | None,
    model: str | Backbone = DEFAULT_MODEL,
    data: str | None = None,
    *,
    split: str = "test",
    config: str | Path | None = None,
    template: str | None = None,
    verbalizer: dict[str, str] | None = None,
    batch_size: int = 32,
    dtype: str = "float32",
    task: str | None = None,
    samples: int = 40,
) -> dict:
    """Metrics of a prompt or prefix (or, with `prompt=None`, the bare model zero-shot) on a
    data split. The task comes from the artifact's metadata unless given. For the suffix task
    the metric is the suffix rate of sampled continuations, with and without the prefix.
    """
    soft = _as_prompt(prompt)
    task_config = resolve_task(
        soft, data, config=config, template=template, verbalizer=verbalizer, type=task
    )
    if not task_config.data:
        raise UsageError("no data given: pass --data (a folder, a file or hf:NAME)")
    backbone = as_backbone(model, dtype)
    steer, length = steering(soft, backbone, str(prompt))
    examples = load_split(data_spec(task_config), split)
    if task_config.type == "suffix":
        from softprompt.suffix import evaluate_suffix

        result = evaluate_suffix(backbone, steer, examples, task_config.suffix, samples=samples)
        return {"model": backbone.name, "prompt": str(prompt) if soft else None, **result}
    built = build_task(task_config, backbone, length)
    encoded = encode_examples(built, examples)
    metrics = evaluate_task(built, steer, encoded, batch_size)
    trained_on = [m.get("name") for m in soft.models] if soft is not None else []
    return {
        "model": backbone.name,
        "prompt": str(prompt) if soft is not None else None,
        "trained_on_model": backbone.name in trained_on,
        "split": split,
        "data": task_config.data,
        **metrics,
    }


@torch.no_grad()
def predict(
    prompt: str | Path | SoftPrompt | None,
    texts: list[str],
    model: str | Backbone = DEFAULT_MODEL,
    *,
    config: str | Path | None = None,
    template: str | None = None,
    verbalizer: dict[str, str] | None = None,
    text_b: list[str] | None = None,
    dtype: str = "float32",
) -> list[dict]:
    """The predicted label and the probability of every label, for each text."""
    soft = _as_prompt(prompt)
    task_config = resolve_task(soft, config=config, template=template, verbalizer=verbalizer)
    if task_config.type != "classification":
        raise UsageError("predict needs a classification task (template and verbalizer)")
    backbone = as_backbone(model, dtype)
    steer, length = steering(soft, backbone, str(prompt))
    task = build_task(task_config, backbone, length)
    pairs = text_b or [None] * len(texts)
    encoded = [
        task.encode(Example(text=t, text_b=b, where="--text"), with_label=False)
        for t, b in zip(texts, pairs)
    ]
    scores = classification_scores(task, steer, encoded)
    probabilities = torch.softmax(scores, dim=-1)
    results = []
    for text, row in zip(texts, probabilities):
        best = int(row.argmax())
        results.append(
            {
                "text": text,
                "label": task.labels[best],
                "probabilities": {label: float(p) for label, p in zip(task.labels, row)},
            }
        )
    return results
