"""Metrics of a prompt (or the bare model) on a data split: loss, accuracy, macro-F1, perplexity."""

from __future__ import annotations

import math

import torch
from sklearn.metrics import f1_score

from softprompt.tasks import ClassificationTask, EncodedExample, LanguageModelingTask


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
