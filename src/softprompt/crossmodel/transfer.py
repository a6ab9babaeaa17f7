"""Moving a soft prompt from one model to another through a fitted embedding alignment.

`transfer_prompt` maps a prompt's rows [L, d_a] into the target model's space [L, d_b] with
the (cached) alignment and records where it came from; `evaluate_transfer` compares it on the
target with zero-shot and a random prompt of the same norms. `run_transfer` and `align_both`
are what the `softprompt transfer` and `softprompt align` commands do.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from softprompt.alignment.cache import load_alignment
from softprompt.alignment.fit import (
    DEFAULT_HOLDOUT,
    DEFAULT_METHOD,
    DEFAULT_RIDGE_LAMBDA,
    Alignment,
    check_settings,
)
from softprompt.config import load_config
from softprompt.errors import UsageError
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt, load_prompt, save_prompt
from softprompt.models import Backbone, as_backbone, load_backbone
from softprompt.session import evaluate


def _source_model(prompt: SoftPrompt, source: Backbone | str | None) -> Backbone | str:
    if source is not None:
        return source
    names = [m.get("name") for m in prompt.models if m.get("name")]
    if not names:
        raise UsageError(
            "the prompt's metadata names no model it was made for; give the source model "
            "(--from MODEL, or source= in Python)"
        )
    return str(names[0])


def transfer_prompt(
    prompt: SoftPrompt | str | Path,
    target: Backbone | str,
    method: str = DEFAULT_METHOD,
    *,
    source: Backbone | str | None = None,
    alignment: Alignment | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    ridge_lambda: float = DEFAULT_RIDGE_LAMBDA,
    refit: bool = False,
    dtype: str = "float32",
) -> SoftPrompt:
    """The prompt mapped into `target`'s embedding space ([L, d_a] -> [L, d_b]).

    The source model is `source`, else the first model in the prompt's metadata; the map is
    `alignment` if given, else `load_alignment` (cached). The new prompt's header names the
    target as its model and records the source models, the map and its quality under `init`.
    """
    soft = load_prompt(prompt) if isinstance(prompt, (str, Path)) else prompt
    check_settings(method, holdout, ridge_lambda)
    target = as_backbone(target, dtype)
    if alignment is None:
        model = as_backbone(_source_model(soft, source), dtype)
        soft.check_fits(model.hidden_size, model.name)
        alignment = load_alignment(
            model,
            target,
            method,
            holdout=holdout,
            seed=seed,
            ridge_lambda=ridge_lambda,
            refit=refit,
        )
    soft.check_fits(alignment.source_dim, alignment.source, source="prompt")
    if alignment.target_dim != target.hidden_size:
        raise UsageError(
            f"the alignment maps into size {alignment.target_dim} but model {target.name} has "
            f"hidden size {target.hidden_size}"
        )
    with torch.no_grad():
        mapped = alignment.apply(soft.embedding.float())
    init = {
        "init": "transfer",
        "source_models": soft.models,
        "source_init": soft.init,
        "source_training": soft.training,
        "alignment": alignment.summary(),
    }
    return SoftPrompt(embedding=mapped, models=[model_record(target)], task=soft.task, init=init)


def random_like(prompt: SoftPrompt, seed: int = 0) -> SoftPrompt:
    """A random prompt with the same shape and the same per-token norms (a baseline)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(prompt.embedding.shape, generator=generator)
    rows = F.normalize(noise, dim=1) * prompt.embedding.float().norm(dim=1, keepdim=True)
    return SoftPrompt(
        embedding=rows, models=prompt.models, task=prompt.task, init={"init": "random"}
    )


def evaluate_transfer(
    transferred: SoftPrompt,
    target: Backbone,
    *,
    config: str | Path,
    split: str = "test",
    source_prompt: SoftPrompt | None = None,
    source: Backbone | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> list[dict]:
    """Metrics on the config's task: B zero-shot, the transferred prompt on B, a random prompt
    of the same norms on B, and (given) the original prompt on its own model A."""
    rows = [
        ("zero-shot", None, target),
        ("transferred", transferred, target),
        ("random (same norms)", random_like(transferred, seed), target),
    ]
    if source_prompt is not None and source is not None:
        rows.append(("source prompt on its model", source_prompt, source))
    results = []
    for name, prompt, model in rows:
        metrics = evaluate(prompt, model, config=config, split=split, batch_size=batch_size)
        results.append({**metrics, "row": name, "prompt": name})
    return results


def run_transfer(
    prompt_path: str | Path,
    to: str,
    out: str | Path,
    *,
    method: str = DEFAULT_METHOD,
    source: str | None = None,
    config: str | Path | None = None,
    split: str = "test",
    batch_size: int = 32,
    dtype: str = "float32",
    refit: bool = False,
) -> dict:
    """What `softprompt transfer` does: map, write the new prompt, optionally evaluate on B."""
    check_settings(method, DEFAULT_HOLDOUT, DEFAULT_RIDGE_LAMBDA)
    if config is not None:
        load_config(config)  # a bad config fails before any work
    soft = load_prompt(prompt_path)
    model_a = load_backbone(str(_source_model(soft, source)), dtype=dtype)
    model_b = load_backbone(to, dtype=dtype)
    soft.check_fits(model_a.hidden_size, model_a.name, source=str(prompt_path))
    alignment = load_alignment(model_a, model_b, method, refit=refit)
    transferred = transfer_prompt(soft, model_b, alignment=alignment)
    written = save_prompt(transferred, out)
    result = {
        "prompt": str(prompt_path),
        "path": str(written),
        "alignment": {**alignment.summary(), "cache": alignment.path},
    }
    if config is not None:
        result["evaluation"] = evaluate_transfer(
            transferred,
            model_b,
            config=config,
            split=split,
            source_prompt=soft,
            source=model_a,
            batch_size=batch_size,
        )
    return result


def align_both(
    model_a: str, model_b: str, method: str = DEFAULT_METHOD, *, dtype: str = "float32"
) -> dict:
    """What `softprompt align` does: the map's quality A -> B and B -> A (both cached)."""
    check_settings(method, DEFAULT_HOLDOUT, DEFAULT_RIDGE_LAMBDA)
    a, b = load_backbone(model_a, dtype=dtype), load_backbone(model_b, dtype=dtype)
    forward = load_alignment(a, b, method)
    backward = load_alignment(b, a, method)
    return {
        "method": method,
        "directions": [
            {"source": a.name, "target": b.name, **forward.quality},
            {"source": b.name, "target": a.name, **backward.quality},
        ],
    }
