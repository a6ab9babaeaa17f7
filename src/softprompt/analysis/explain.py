"""`softprompt explain`: the token splitting analysis of one prompt on one or more models."""

from __future__ import annotations

from pathlib import Path

import torch

from softprompt.analysis.compression import compress, top_tokens
from softprompt.analysis.importance import ABLATIONS, exact_importance, gradient_importance
from softprompt.analysis.neighbours import nearest_tokens
from softprompt.analysis.splitting import alignment, knn_location, owners
from softprompt.artifacts import open_prompt
from softprompt.errors import UsageError
from softprompt.evaluation import evaluate_task, resolve_task
from softprompt.methods.prompt import SoftPrompt
from softprompt.models import Backbone, as_backbone
from softprompt.tasks import load_task


def explain(
    prompt: str | Path | SoftPrompt,
    models: list[str | Backbone],
    data: str | None = None,
    *,
    split: str = "test",
    config: str | Path | None = None,
    template: str | None = None,
    verbalizer: dict[str, str] | None = None,
    importance: str = "exact",
    ablation: str = "zero",
    top_k: int = 5,
    knn: int = 7,
    keep: int | None = None,
    max_examples: int | None = None,
    batch_size: int = 32,
    dtype: str = "float32",
) -> dict:
    """Nearest tokens, importance, owners, locations, alignment and compression, as a dict."""
    if importance not in ("exact", "gradient"):
        raise UsageError("--importance must be exact or gradient")
    if ablation not in ABLATIONS:
        raise UsageError(f"--ablation must be one of {', '.join(ABLATIONS)}")
    from_file = isinstance(prompt, (str, Path))
    soft = open_prompt(prompt) if from_file else prompt  # .safetensors or research .pt
    name = str(prompt) if from_file else "prompt"
    task_config = resolve_task(soft, data, config=config, template=template, verbalizer=verbalizer)
    if task_config.type != "classification" or not task_config.data:
        raise UsageError("explain needs a classification task with data (--data)")
    backbones = [as_backbone(m, dtype) for m in models]
    per_model, tasks = [], []
    points = [soft.embedding_for(b.hidden_size, b.name, source=name) for b in backbones]
    for backbone, point in zip(backbones, points):
        task, encoded = load_task(task_config, backbone, soft.length, split, max_examples)
        tasks.append((task, encoded))
        per_model.append(
            _model_analysis(point, backbone, task, encoded, importance, ablation, top_k, batch_size)
        )
    matrix = torch.tensor([m["importance"]["loss"] for m in per_model])
    owner, strength = owners(matrix)
    tables = [b.embedding_table() for b in backbones]
    location = {d: knn_location(points, tables, k=knn, distance=d)[0] for d in ("cosine", "l2")}
    tokens = _token_table(
        soft.length, [b.name for b in backbones], owner, strength, location, per_model
    )
    compression = _compression(soft, owner, matrix, tasks, backbones, keep, batch_size)
    return {
        "name": name,
        "length": soft.length,
        "split": split,
        "data": task_config.data,
        "importance": importance,
        "ablation": ablation,
        "models": per_model,
        "tokens": tokens,
        "alignment": {d: alignment(owner, location[d]) for d in location},
        "chance": 1 / len(backbones),
        "compression": compression,
    }


def _model_analysis(point, backbone, task, encoded, importance, ablation, top_k, batch_size):
    """Importance and nearest tokens of the prompt as this model takes it (`point`, [L, d])."""
    if importance == "exact":
        result = exact_importance(task, point, encoded, ablation, batch_size)
        scores = {k: result[k].tolist() for k in ("loss", "accuracy", "normalised")}
        base_loss, base_accuracy = result["base_loss"], result["base_accuracy"]
    else:
        estimate = gradient_importance(task, point, encoded, ablation, batch_size)
        base = evaluate_task(task, point, encoded, batch_size)
        base_loss, base_accuracy = base["loss"], base["accuracy"]
        scores = {
            "loss": estimate.tolist(),
            "accuracy": None,
            "normalised": (estimate / max(base_loss, 1e-12)).tolist(),
        }
    return {
        "name": backbone.name,
        "base_loss": base_loss,
        "base_accuracy": base_accuracy,
        "importance": scores,
        "neighbours": nearest_tokens(point, backbone.embedding_table(), backbone.tokenizer, top_k),
    }


def _compression(soft, owner, matrix, tasks, backbones, keep, batch_size) -> list[dict]:
    """Each model evaluated with only its own tokens (one model: its top `keep` tokens)."""
    names = [b.name for b in backbones]
    rows = []
    for model, (task, encoded) in enumerate(tasks):
        if len(tasks) > 1:
            kept = (owner == model).nonzero().flatten().tolist()
        else:
            kept = top_tokens(matrix[0], keep or max(1, soft.length // 2))
        for mode in ("mask", "remove"):
            if not kept:
                rows.append(
                    {
                        "model": names[model],
                        "mode": mode,
                        "kept": [],
                        "tokens": 0,
                        "loss": float("nan"),
                        "accuracy": float("nan"),
                        "macro_f1": float("nan"),
                    }
                )
                continue
            smaller = compress(soft, kept, mode)
            point = smaller.embedding_for(backbones[model].hidden_size, names[model])
            metrics = evaluate_task(task, point, encoded, batch_size)
            rows.append(
                {
                    "model": names[model],
                    "mode": mode,
                    "kept": kept,
                    "tokens": len(kept),
                    **{k: metrics[k] for k in ("loss", "accuracy", "macro_f1")},
                }
            )
    return rows


def _token_table(length, names, owner, strength, location, per_model) -> list[dict]:
    """Per prompt token: its owner, importance, locations and nearest word in each model."""
    return [
        {
            "index": i,
            "owner": names[int(owner[i])],
            "strength": float(strength[i]),
            "location_cosine": names[int(location["cosine"][i])],
            "location_l2": names[int(location["l2"][i])],
            "nearest": [m["neighbours"][i]["cosine"][0]["token"] for m in per_model],
        }
        for i in range(length)
    ]
