"""Transfer evaluation: several prompts x several models, with the paper's baselines.

Rows are the prompts plus two baselines: the bare model (zero-shot, same template) and each
prompt's initial, untrained state (re-created from the init recorded in its metadata).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from softprompt.data import load_split
from softprompt.errors import PromptFileError, UsageError
from softprompt.evaluation import evaluate_task, resolve_task
from softprompt.files import atomic_text_file, write_text_atomic
from softprompt.methods.prompt import INIT_MODES, SoftPrompt, init_embedding, load_prompt
from softprompt.models import Backbone, load_backbone
from softprompt.tasks import build_task, data_spec, encode_examples

METRIC_KEYS = ("loss", "accuracy", "macro_f1", "perplexity")


def initial_prompt(prompt: SoftPrompt, backbones: dict[str, Backbone], dtype: str) -> SoftPrompt:
    """The untrained prompt a trained one started from, from its recorded init and models."""
    init = prompt.init or {}
    mode = init.get("init")
    if mode not in ("random", "vocab", "text", "file") or not prompt.models:
        raise UsageError("the prompt's metadata does not record its initialisation")
    first = str(prompt.models[0]["name"])
    if first not in backbones:
        backbones[first] = load_backbone(first, dtype=dtype)
    embedding = init_embedding(
        prompt.length,
        backbones[first],
        mode,
        seed=int(init.get("seed", 0)),
        text=init.get("text"),
        file=init.get("file"),
    )
    return SoftPrompt(embedding=embedding, models=prompt.models, task=prompt.task, init=init)


def transfer_matrix(
    prompts: list[str | Path],
    models: list[str],
    data: str | None = None,
    *,
    split: str = "test",
    config: str | Path | None = None,
    template: str | None = None,
    verbalizer: dict[str, str] | None = None,
    batch_size: int = 32,
    dtype: str = "float32",
    baselines: bool = True,
    device: str | torch.device = "cpu",
) -> dict:
    """Metrics of every prompt (and baseline) on every model (loaded on `device`); cells a
    prompt cannot run on (another hidden size) are null with the reason."""
    if not prompts or not models:
        raise UsageError("a transfer matrix needs at least one prompt and one model")
    loaded = {str(p): load_prompt(p) for p in prompts}
    task_config = resolve_task(
        next(iter(loaded.values())), data, config=config, template=template, verbalizer=verbalizer
    )
    if not task_config.data:
        raise UsageError("no data given: pass --data (a folder, a file or hf:NAME)")
    examples = load_split(data_spec(task_config), split)
    backbones = {name: load_backbone(name, dtype=dtype, device=device) for name in models}
    rows = []
    if baselines:
        rows.append({"name": "zero-shot", "kind": "zero_shot", "prompt": None})
    for name, prompt in loaded.items():
        rows.append({"name": name, "kind": "prompt", "prompt": prompt})
        if baselines and prompt.init.get("init") in INIT_MODES:  # not for transferred ones
            start = initial_prompt(prompt, backbones, dtype)
            rows.append({"name": f"initial:{name}", "kind": "initial", "prompt": start})
    results = []
    for row in rows:
        cells = {}
        for model in models:
            cells[model] = _cell(row["prompt"], backbones[model], task_config, examples, batch_size)
        trained_on = [m.get("name") for m in row["prompt"].models] if row["prompt"] else []
        results.append(
            {"name": row["name"], "kind": row["kind"], "trained_on": trained_on, "results": cells}
        )
    return {"models": models, "split": split, "data": task_config.data, "rows": results}


def _cell(prompt: SoftPrompt | None, backbone: Backbone, task_config, examples, batch_size):
    embedding = None
    if prompt is not None:
        try:
            embedding = prompt.embedding_for(backbone.hidden_size, backbone.name)
        except PromptFileError:
            return {
                "error": f"hidden size {prompt.hidden_size} does not fit {backbone.hidden_size}",
            }
    task = build_task(task_config, backbone, prompt.length if prompt is not None else 0)
    encoded = encode_examples(task, examples)
    return evaluate_task(task, embedding, encoded, batch_size)


def write_matrix(matrix: dict, out_dir: str | Path) -> list[Path]:
    """Write `transfer.json` and `transfer.csv` (one line per prompt and model)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "transfer.json"
    write_text_atomic(json_path, json.dumps(matrix, indent=2))
    csv_path = folder / "transfer.csv"
    with atomic_text_file(csv_path) as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "kind", "model", "trained_on_model", *METRIC_KEYS, "error"])
        for row in matrix["rows"]:
            for model, cell in row["results"].items():
                writer.writerow(
                    [row["name"], row["kind"], model, model in row["trained_on"]]
                    + [cell.get(key, "") for key in METRIC_KEYS]
                    + [cell.get("error", "")]
                )
    return [json_path, csv_path]
