"""`train.lr: auto` against a sweep of fixed rates (issue #39), measured: per bundled model,
task (the sample sentiment and emotion sets), method (plain, P-tuning, residual) and seed, the
test accuracy of a run with `lr: auto` and of runs at each rate of the sweep (same steps, same
batches: a function of the seed and the step alone), the bare model's zero-shot accuracy, and
the search's wall time against the auto run's training time.

Targets (issue #39): auto within 2 points of the sweep's best in >= 90% of cells, never below
zero-shot; the search <= 30% of a run's time.

Run: .venv/bin/python benchmarks/bench_lr.py [--models smollm2-135m gemma3-270m]
     [--tasks sentiment emotion] [--methods prompt p_tuning residual] [--seeds 0 1 2]
     [--steps 40] [--search-steps 20] [--lrs 0.001 0.003 0.01 0.03 0.1] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from common import ROOT, machine

from softprompt.config import load_config
from softprompt.models import load_backbone
from softprompt.session import Session
from softprompt.training.trainer import Trainer

CONFIGS = {"sentiment": "sentiment.yaml", "emotion": "emotion.yaml"}
METHODS = {
    "prompt": "",
    "p_tuning": ", encoder: mlp, encoder_hidden_size: 128",
    "residual": ", bottleneck: 128, layer_norm: true",
}


def run(backbone, cell: dict, lr, args) -> dict:
    """One training run of `cell` at rate `lr` (a number or "auto"): test accuracy, seconds."""
    method, seed, task = cell["method"], cell["seed"], cell["task"]
    overrides = [
        f"method={method}",
        f"models={json.dumps([cell['model']])}",
        f"task.data={ROOT / 'examples/data' / task}",
        f"prompt={{length: 16, init: vocab, seed: {seed}{METHODS[method]}}}",
        f"train={{steps: {args.steps}, batch_size: 8, lr: {lr}, schedule: cosine, "
        f"warmup: 0.1, eval_every: {args.steps}, checkpoint_every: {args.steps}, seed: {seed}, "
        f"precision: auto, lr_search_steps: {args.search_steps}}}",
    ]
    config = load_config(ROOT / "examples/configs" / CONFIGS[task], overrides)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = Trainer(config, f"{folder}/run", backbones=[backbone], progress=False).run()
        seconds = time.perf_counter() - started
        session = Session(f"{folder}/run/last.safetensors", backbone)
        data = str(ROOT / "examples/data" / task)
        accuracy = session.evaluate(data, split="test")["accuracy"]
    search = summary["lr_search"] or {}
    return {
        "accuracy": accuracy,
        "lr": summary["lr"],
        "seconds": seconds,
        "search_seconds": search.get("seconds", 0.0),
    }


def zero_shot(backbone, task: str) -> float:
    """The bare model's test accuracy with the task's template and verbalizer."""
    config = ROOT / "examples/configs" / CONFIGS[task]
    session = Session(None, backbone, config=str(config))
    return session.evaluate(str(ROOT / "examples/data" / task), split="test")["accuracy"]


def measure_cell(backbone, cell: dict, args) -> dict:
    """The sweep and the auto run of one cell, the auto run first."""
    auto = run(backbone, cell, "auto", args)
    print(f"    auto: {auto['accuracy']:.3f} at {auto['lr']:.2g} ({auto['seconds']:.0f} s)")
    sweep = {}
    for lr in args.lrs:
        sweep[lr] = result = run(backbone, cell, lr, args)
        print(f"    lr {lr}: {result['accuracy']:.3f} ({result['seconds']:.0f} s)", flush=True)
    best = max(sweep, key=lambda lr: sweep[lr]["accuracy"])
    worst = min(sweep, key=lambda lr: sweep[lr]["accuracy"])
    run_seconds = auto["seconds"] - auto["search_seconds"]
    return {
        **cell,
        "auto": auto["accuracy"],
        "auto_lr": auto["lr"],
        "best": sweep[best]["accuracy"],
        "best_lr": best,
        "worst": sweep[worst]["accuracy"],
        "worst_lr": worst,
        "search_share": auto["search_seconds"] / run_seconds if run_seconds else 0.0,
        "search_seconds": auto["search_seconds"],
        "run_seconds": run_seconds,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | task | method | seed | zero-shot | sweep worst (lr) | sweep best (lr) "
        "| auto (lr found) | auto - best | search / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['task']} | {r['method']} | {r['seed']} | {r['zero_shot']:.3f} "
            f"| {r['worst']:.3f} ({r['worst_lr']:g}) | {r['best']:.3f} ({r['best_lr']:g}) "
            f"| {r['auto']:.3f} ({r['auto_lr']:.2g}) | {r['auto'] - r['best']:+.3f} "
            f"| {r['search_share']:.0%} |"
        )
    near = sum(r["auto"] >= r["best"] - 0.02 for r in rows)
    above = sum(r["auto"] >= r["zero_shot"] for r in rows)
    lines.append(
        f"\nauto within 2 points of the sweep's best: {near}/{len(rows)} cells; "
        f"not below zero-shot: {above}/{len(rows)}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--tasks", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--search-steps", type=int, default=20)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(machine())
    rows, started = [], time.perf_counter()
    for model in args.models:
        backbone = load_backbone(model)
        for task in args.tasks:
            bare = zero_shot(backbone, task)
            for method in args.methods:
                for seed in args.seeds:
                    cell = {"model": model, "task": task, "method": method, "seed": seed}
                    print(f"  {cell} (zero-shot {bare:.3f})", flush=True)
                    rows.append({**measure_cell(backbone, cell, args), "zero_shot": bare})
                    print(table(rows[-1:]).splitlines()[2], flush=True)
    print(f"{len(rows)} cells, {time.perf_counter() - started:.0f} s; {args.steps} steps each")
    print(table(rows))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
