"""Cost of token importance on the bundled SmolLM2 with a trained 16-token prompt:
the research code's loop (one pass per token, full-vocabulary logits everywhere) vs
softprompt's batched exact ablation vs the gradient estimate, and the estimate's Spearman
rank agreement with the exact importance (target: exact >= 4x cheaper than the loop, L=16).

The three alternate in blocks (naive, exact, gradient, naive, ...); medians over --repeats.
Run: .venv/bin/python benchmarks/bench_explain.py PROMPT [--examples 48] [--dtype bfloat16]
     [--repeats 1]
(PROMPT: e.g. the demo run's prompt.safetensors)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ROOT, alternate, device, machine, median
from scipy.stats import spearmanr

from reference import naive_importance  # tests/reference.py, put on the path by common
from softprompt.analysis.importance import exact_importance, gradient_importance
from softprompt.data import load_split
from softprompt.evaluation import resolve_task
from softprompt.methods.prompt import load_prompt
from softprompt.models import load_backbone
from softprompt.tasks import build_task, data_spec, encode_examples


def contenders(task, embedding, encoded, results: dict) -> dict:
    """The three methods as calls that keep their latest result in `results`."""
    methods = {
        "naive": lambda: naive_importance(task, embedding, encoded, batch_size=8),
        "exact": lambda: exact_importance(task, embedding, encoded, batch_size=32),
        "gradient": lambda: gradient_importance(task, embedding, encoded, batch_size=32),
    }
    return {
        name: (lambda name=name, run=run: results.__setitem__(name, run()))
        for name, run in methods.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompt", type=Path)
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=1, help="blocks per method")
    args = parser.parse_args()
    print(machine())
    prompt = load_prompt(args.prompt)
    task_config = resolve_task(prompt, str(ROOT / "examples/data/sentiment"))
    backbone = load_backbone(str(prompt.models[0]["name"]), dtype=args.dtype, device=device())
    task = build_task(task_config, backbone, prompt.length)
    examples = load_split(data_spec(task_config), "test")[: args.examples]
    encoded = encode_examples(task, examples)
    results: dict = {}
    times = alternate(contenders(task, prompt.embedding, encoded, results), args.repeats, 1)
    naive_s, exact_s, grad_s = (median(times[name]) for name in ("naive", "exact", "gradient"))
    naive, exact, grad = results["naive"], results["exact"], results["gradient"]
    print(f"L={prompt.length}, {len(encoded)} examples, {args.dtype}, medians of {args.repeats}")
    print(f"naive loop (one pass per token):   {naive_s:7.1f} s")
    print(
        f"batched exact ablation:            {exact_s:7.1f} s  ({naive_s / exact_s:.1f}x faster;"
        " target >= 4x)"
    )
    print(f"gradient estimate (one backward):  {grad_s:7.1f} s  ({naive_s / grad_s:.1f}x faster)")
    print(f"exact vs naive max difference:     {float((exact['loss'] - naive).abs().max()):.2e}")
    rho = spearmanr(exact["loss"].numpy(), grad.numpy()).statistic
    print(f"Spearman(gradient, exact):         {rho:.3f}")


if __name__ == "__main__":
    main()
