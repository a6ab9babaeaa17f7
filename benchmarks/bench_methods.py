"""Plain prompt tuning against P-tuning and residual prompt tuning (issue #26), measured: a
bundled model (SmolLM2-135M unless --model says another), the sample sentiment task, the same
steps and batches for every method (the batches are a function of the training seed and the
step alone), over seeds x learning rates. Prints test accuracy mean ± std per method and
learning rate, and the spread of the per-rate means (max - min: how much the method cares about
its learning rate).

Run: .venv/bin/python benchmarks/bench_methods.py [--steps 30] [--seeds 0 1 2]
     [--lrs 0.003 0.01 0.03] [--model smollm2-135m] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from common import ROOT, machine

from softprompt.config import load_config
from softprompt.models import load_backbone
from softprompt.session import Session
from softprompt.training.trainer import Trainer

METHODS = {
    "prompt": {},
    "p_tuning": {"encoder": "mlp", "encoder_hidden_size": 128},
    "residual": {"bottleneck": 128, "layer_norm": True},
}


def train_and_test(backbone, method: str, lr: float, seed: int, steps: int, model: str) -> float:
    """Test accuracy of one run (its own seed for the prompt's init and the batches)."""
    settings = ",".join(f"{k}: {json.dumps(v)}" for k, v in METHODS[method].items())
    overrides = [
        f"method={method}",
        f"models={json.dumps([model])}",
        f"task.data={ROOT / 'examples/data/sentiment'}",
        f"prompt={{length: 16, init: vocab, seed: {seed}{', ' + settings if settings else ''}}}",
        f"train={{steps: {steps}, batch_size: 8, micro_batch_size: 8, lr: {lr}, "
        f"schedule: cosine, warmup: 0.1, eval_every: {steps}, checkpoint_every: {steps}, "
        f"seed: {seed}, precision: fp32}}",
    ]
    config = load_config(ROOT / "examples/configs/sentiment.yaml", overrides)
    with tempfile.TemporaryDirectory() as folder:
        Trainer(config, f"{folder}/run", backbones=[backbone], progress=False).run()
        session = Session(f"{folder}/run/last.safetensors", backbone)
        return session.evaluate(str(ROOT / "examples/data/sentiment"), split="test")["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01, 0.03])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(machine())
    backbone = load_backbone(args.model)
    results: dict[str, dict[float, list[float]]] = {m: {} for m in args.methods}
    start = time.perf_counter()
    for seed in args.seeds:  # methods in turns within each seed and rate
        for lr in args.lrs:
            for method in args.methods:
                accuracy = train_and_test(backbone, method, lr, seed, args.steps, args.model)
                results[method].setdefault(lr, []).append(accuracy)
                print(f"  {method} lr {lr} seed {seed}: test accuracy {accuracy:.3f}", flush=True)
    print(
        f"{len(args.seeds) * len(args.lrs) * len(args.methods)} runs of {args.steps} steps, "
        f"{time.perf_counter() - start:.0f} s; {args.model}, sample sentiment task (test split)"
    )
    print("\n| method | " + " | ".join(f"lr {lr}" for lr in args.lrs) + " | spread across rates |")
    print("| --- |" + " --- |" * (len(args.lrs) + 1))
    for method, by_rate in results.items():
        means = [statistics.mean(by_rate[lr]) for lr in args.lrs]
        cells = [
            f"{statistics.mean(by_rate[lr]):.3f} ± {statistics.pstdev(by_rate[lr]):.3f}"
            for lr in args.lrs
        ]
        print(f"| {method} | " + " | ".join(cells) + f" | {max(means) - min(means):.3f} |")
    if args.json:
        print(json.dumps({m: {str(lr): v for lr, v in r.items()} for m, r in results.items()}))


if __name__ == "__main__":
    main()
