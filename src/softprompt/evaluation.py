"""Metrics of a prompt or prefix (or the bare model) on a data split, and predictions for
texts: the task's own metrics (loss, accuracy, macro-F1, perplexity, suffix rate)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import ValidationError

from softprompt.config import TaskConfig, describe_error, load_config
from softprompt.data import Example, canonical_split, load_split
from softprompt.errors import UsageError
from softprompt.methods import load_artifact
from softprompt.methods.base import Artifact
from softprompt.models.backbone import DEFAULT_MODEL, Backbone, as_backbone
from softprompt.steering.base import NoSteering, Steering
from softprompt.steering.forward import SteeringLike, as_steering
from softprompt.tasks import build_task, data_spec
from softprompt.tasks.base import Task
from softprompt.tasks.classification import classification_scores


def evaluate_task(task: Task, steer: SteeringLike, encoded: list, batch_size: int = 32) -> dict:
    """Metrics of any task kind under `steer` (a Steering, a prompt tensor or None)."""
    with torch.no_grad():
        return task.evaluate(as_steering(steer), encoded, batch_size)


def as_artifact(prompt: str | Path | Artifact | None) -> Artifact | None:
    """An artifact from a path (read and validated), or the one given."""
    if prompt is None or not isinstance(prompt, (str, Path)):
        return prompt
    return load_artifact(prompt)


def steering(artifact: Artifact | None, backbone: Backbone, source: str) -> Steering:
    """What steers `backbone` for the artifact (checked to fit it); nothing for None."""
    if artifact is None:
        return NoSteering()
    return artifact.steering_for(backbone, source)


def resolve_task(
    prompt: Artifact | None,
    data: str | None = None,
    *,
    config: str | Path | None = None,
    check_fit: Callable[[], object] | None = None,
    **overrides,
) -> TaskConfig:
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
        return TaskConfig.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(f"task: {describe_error(exc, TaskConfig)}") from exc


def fit_check(
    artifact: Artifact | None, model: str | Backbone | None, dtype: str, source: str
) -> Callable[[], object] | None:
    """For `resolve_task`: a check, run only when needed, that the artifact fits the model it
    is run on (loading the model if given by name); None without an artifact."""
    if artifact is None:
        return None
    return lambda: steering(artifact, as_backbone(model_for(artifact, model), dtype), source)


def model_for(artifact: Artifact | None, model: str | Backbone | None = None) -> str | Backbone:
    """The model to run: the one given, else the first model the prompt was trained on, else the
    default model. The CLI and the Python API pick alike, so that a prompt is not sent by default
    to a model it does not fit."""
    if model is not None:
        return model
    if artifact is not None and artifact.models and artifact.models[0].get("name"):
        return str(artifact.models[0]["name"])
    return DEFAULT_MODEL


def evaluate(
    prompt: str | Path | Artifact | None,
    model: str | Backbone | None = None,
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
    data split. The model defaults to the prompt's own (`model_for`), the task to the artifact's
    metadata; `split` may be an alias (validation is dev). For the suffix task
    the metric is the suffix rate of sampled continuations, with and without the prefix.
    """
    soft = as_artifact(prompt)
    task_config = resolve_task(
        soft,
        data,
        config=config,
        check_fit=fit_check(soft, model, dtype, str(prompt)),
        template=template,
        verbalizer=verbalizer,
        type=task,
    )
    if not task_config.data:
        raise UsageError("no data given: pass --data (a folder, a file or hf:NAME)")
    backbone = as_backbone(model_for(soft, model), dtype)
    steer = steering(soft, backbone, str(prompt))
    split = canonical_split(split)
    examples = load_split(data_spec(task_config), split)
    built = build_task(task_config, backbone, steer.input_length)
    with torch.no_grad():
        metrics = built.report(steer, examples, batch_size=batch_size, samples=samples)
    trained_on = [m.get("name") for m in soft.models] if soft is not None else []
    return {
        "model": backbone.name,
        "prompt": str(prompt) if soft is not None else None,
        "trained_on_model": backbone.name in trained_on,
        "split": split,
        "data": task_config.data,
        **metrics,
    }


def classifier(
    prompt: str | Path | Artifact | None,
    model: str | Backbone | None = None,
    *,
    config: str | Path | None = None,
    template: str | None = None,
    verbalizer: dict[str, str] | None = None,
    dtype: str = "float32",
) -> tuple[Task, Steering, TaskConfig]:
    """The classification task of a prompt on a model (its recorded task, then `config`, then
    the overrides), what steers the model, and the resolved task config (whose field names say
    which record fields hold the texts and the label): what `predict` and the batch files of
    `softprompt.batch_files` share."""
    soft = as_artifact(prompt)
    task_config = classification_config(
        soft, str(prompt), model, config, template, verbalizer, dtype
    )
    backbone = as_backbone(model_for(soft, model), dtype)
    steer = steering(soft, backbone, str(prompt))
    return build_task(task_config, backbone, steer.input_length), steer, task_config


def classification_config(
    soft: Artifact | None,
    source: str,
    model: str | Backbone | None,
    config: str | Path | None,
    template: str | None,
    verbalizer: dict[str, str] | None,
    dtype: str,
) -> TaskConfig:
    """The classification task config `predict` and the batch files run (see `resolve_task`);
    a prompt that does not fit `model` is reported before a missing verbalizer."""
    task_config = resolve_task(
        soft,
        config=config,
        check_fit=fit_check(soft, model, dtype, source),
        template=template,
        verbalizer=verbalizer,
    )
    if task_config.type != "classification":
        raise UsageError("predict needs a classification task (template and verbalizer)")
    return task_config


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


@torch.no_grad()
def predict(
    prompt: str | Path | Artifact | None,
    texts: list[str],
    model: str | Backbone | None = None,
    *,
    config: str | Path | None = None,
    template: str | None = None,
    verbalizer: dict[str, str] | None = None,
    text_b: list[str] | None = None,
    dtype: str = "float32",
) -> list[dict]:
    """The predicted label and the probability of every label, for each text; the model
    defaults to the prompt's own (`model_for`), as in the CLI."""
    task, steer, _ = classifier(
        prompt, model, config=config, template=template, verbalizer=verbalizer, dtype=dtype
    )
    pairs = text_b or [None] * len(texts)
    encoded = [
        task.encode(Example(text=t, text_b=b, where="--text"), with_label=False)
        for t, b in zip(texts, pairs)
    ]
    rows = prediction_rows(task, classification_scores(task, steer, encoded))
    return [{"text": text, **row} for text, row in zip(texts, rows)]
