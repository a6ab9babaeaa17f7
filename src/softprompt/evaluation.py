"""The task-level pieces of evaluation that a `Session`, training and the analyses share: which
task to run (an artifact's recorded task with overrides), which model an artifact runs on by
default, metrics of any task under a steering, and prediction rows from label scores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import ValidationError

from softprompt.config import describe_error, load_config
from softprompt.errors import ConfigError, UsageError
from softprompt.methods.base import Artifact, trained_model
from softprompt.models import DEFAULT_MODEL, Backbone
from softprompt.steering.forward import SteeringLike, as_steering
from softprompt.tasks import task_settings
from softprompt.tasks.base import Task, TaskSettings


def evaluate_task(task: Task, steer: SteeringLike, encoded: list, batch_size: int = 32) -> dict:
    """Metrics of any task kind under `steer` (a Steering, a prompt tensor or None)."""
    with torch.no_grad():
        return task.evaluate(as_steering(steer), encoded, batch_size)


def resolve_task(
    prompt: Artifact | None,
    data: str | None = None,
    *,
    config: str | Path | None = None,
    check_fit: Callable[[], object] | None = None,
    **overrides,
) -> TaskSettings:
    """The task to evaluate on: the prompt's recorded task, then a config file's task section,
    then explicit overrides (template=..., verbalizer=..., data=...), later ones winning.

    `check_fit` (see `fit_check`) runs before a missing verbalizer is reported: a prompt that
    does not fit the model is the first thing to fix, since no verbalizer would mend it."""
    raw: dict = dict(prompt.task) if prompt is not None and prompt.task else {}
    raw.pop("max_examples", None)  # a training-time limit, not part of the task
    if config is not None:
        raw.update(load_config(config).task.model_dump(exclude_unset=True))
    raw.update({k: v for k, v in overrides.items() if v is not None})
    if data is not None:
        raw["data"] = data
    raw.setdefault("data", "")
    if raw.get("type", "classification") == "classification" and not raw.get("verbalizer"):
        if check_fit is not None:
            check_fit()
        origin = "the prompt's metadata has none" if prompt is not None else "no prompt gives one"
        raise UsageError(
            f"the classification task needs a verbalizer and {origin}; pass --verbalizer "
            '\'{"negative": " bad", "positive": " good"}\' or --config CONFIG (a config '
            "with the task), verbalizer= or config= in Python"
        )
    try:
        settings = task_settings(str(raw.get("type", "classification")))
    except ConfigError as exc:
        raise UsageError(f"task.type: {exc}") from exc
    # a recorded task may carry keys of another kind (older files kept every kind's keys)
    raw = {key: value for key, value in raw.items() if key in settings.model_fields}
    try:
        return settings.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(f"task: {describe_error(exc, settings)}") from exc


def model_for(artifact: Artifact | None, model: str | Backbone | None = None) -> str | Backbone:
    """The model to run: the one given, else the first model the prompt was trained on, else the
    default model. The CLI and the Python API pick alike, so that a prompt is not sent by default
    to a model it does not fit."""
    return model if model is not None else trained_model(artifact) or DEFAULT_MODEL


def prediction_rows(task: Task, scores: torch.Tensor) -> list[dict]:
    """For each row of class scores [N, C]: the predicted label and every label's
    probability (softmax over the task's labels)."""
    probabilities = torch.softmax(scores, dim=-1)
    return [
        {
            "label": task.labels[int(row.argmax())],
            "probabilities": {label: float(p) for label, p in zip(task.labels, row)},
        }
        for row in probabilities
    ]
