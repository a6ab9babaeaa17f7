"""`softprompt compress`: rank tokens on a model, keep some, write the shorter prompt."""

from __future__ import annotations

from pathlib import Path

import torch

from softprompt.analysis.compression import compress, top_tokens
from softprompt.analysis.importance import exact_importance
from softprompt.analysis.splitting import owners
from softprompt.errors import UsageError
from softprompt.evaluation import evaluate_task, resolve_task
from softprompt.methods.prompt import load_prompt, save_prompt
from softprompt.models import load_backbone
from softprompt.tasks import load_task


def compress_prompt(
    prompt_path: str | Path,
    model: str,
    keep: str | int,
    out_path: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    mode: str = "remove",
    ablation: str = "zero",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> dict:
    """Keep `keep` most important tokens for `model`, or ('owned') the tokens `model` owns
    among the models the prompt was trained on; returns before/after metrics. The models
    load on `device`."""
    soft = load_prompt(prompt_path)
    task_config = resolve_task(soft, data)
    if not task_config.data:
        raise UsageError("no data given: pass --data (a folder, a file or hf:NAME)")
    loaded: dict[str, tuple] = {}

    def task_for(name: str):
        if name not in loaded:
            loaded[name] = _task(name, task_config, soft, split, device)
        return loaded[name]

    if str(keep) == "owned":
        kept = _owned_tokens(soft, model, task_for, ablation, batch_size)
    else:
        kept = _top_tokens(soft, keep, lambda: task_for(model), ablation, batch_size)
    task, encoded = task_for(model)
    smaller = compress(soft, kept, mode)
    before = evaluate_task(task, soft.embedding, encoded, batch_size)
    after = evaluate_task(task, smaller.embedding, encoded, batch_size)
    save_prompt(smaller, out_path)
    return {
        "path": str(out_path),
        "model": model,
        "mode": mode,
        "kept": kept,
        "tokens_before": soft.length,
        "tokens_after": smaller.length if mode == "remove" else len(kept),
        "before": before,
        "after": after,
    }


def _owned_tokens(soft, model: str, task_for, ablation: str, batch_size: int) -> list[int]:
    """The tokens `model` owns among the models the prompt was trained on."""
    candidates = [str(m["name"]) for m in soft.models]
    if model not in candidates:
        raise UsageError(
            f"--keep owned needs --model to be one of the prompt's models "
            f"({', '.join(candidates) or 'none recorded'})"
        )
    importance = []
    for name in candidates:
        task, encoded = task_for(name)
        importance.append(
            exact_importance(task, soft.embedding, encoded, ablation, batch_size)["loss"]
        )
    owner, _ = owners(torch.stack(importance))
    kept = (owner == candidates.index(model)).nonzero().flatten().tolist()
    if not kept:
        raise UsageError(f"{model} owns none of the prompt's tokens; use --keep N instead")
    return kept


def _top_tokens(soft, keep, model_task, ablation: str, batch_size: int) -> list[int]:
    """The `keep` most important tokens on the model (loaded once `keep` is known good)."""
    try:
        count = int(keep)
    except ValueError as exc:
        raise UsageError(f"--keep takes a number of tokens or 'owned', got {keep!r}") from exc
    if not 1 <= count <= soft.length:
        raise UsageError(f"--keep must be between 1 and {soft.length}, got {count}")
    task, encoded = model_task()
    ranking = exact_importance(task, soft.embedding, encoded, ablation, batch_size)["loss"]
    return top_tokens(ranking, count)


def _task(name, task_config, soft, split, device):
    backbone = load_backbone(name, device=device)
    soft.check_fits(backbone.hidden_size, backbone.name)
    return load_task(task_config, backbone, soft.length, split)
