"""Cost of token importance on the bundled SmolLM2 with a trained 16-token prompt:
the research code's loop (one pass per token, full-vocabulary logits everywhere) vs
softprompt's batched exact ablation vs the gradient estimate, and the estimate's Spearman
rank agreement with the exact importance.

Run: .venv/bin/python benchmarks/bench_explain.py PROMPT [--examples 48] [--dtype bfloat16]
(PROMPT: e.g. the demo run's prompt.safetensors)
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from softprompt.analysis.importance import exact_importance, gradient_importance, naive_importance
from softprompt.backbones import load_backbone
from softprompt.data import load_split
from softprompt.evaluate import resolve_task
from softprompt.prompts import load_prompt
from softprompt.tasks import build_task, data_spec, encode_examples

ROOT = Path(__file__).resolve().parents[1]


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prompt", type=Path)
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.dtype}"
    )
    prompt = load_prompt(args.prompt)
    task_config = resolve_task(prompt, str(ROOT / "examples/data/sentiment"))
    backbone = load_backbone(str(prompt.models[0]["name"]), dtype=args.dtype)
    task = build_task(task_config, backbone, prompt.length)
    examples = load_split(data_spec(task_config), "test")[: args.examples]
    encoded = encode_examples(task, examples)
    embedding = prompt.embedding
    naive, naive_s = timed(lambda: naive_importance(task, embedding, encoded, batch_size=8))
    exact, exact_s = timed(lambda: exact_importance(task, embedding, encoded, batch_size=32))
    grad, grad_s = timed(lambda: gradient_importance(task, embedding, encoded, batch_size=32))
    print(f"L={prompt.length}, {len(encoded)} examples")
    print(f"naive loop (one pass per token):   {naive_s:7.1f} s")
    print(f"batched exact ablation:            {exact_s:7.1f} s  ({naive_s / exact_s:.1f}x faster)")
    print(f"gradient estimate (one backward):  {grad_s:7.1f} s  ({naive_s / grad_s:.1f}x faster)")
    print(f"exact vs naive max difference:     {float((exact['loss'] - naive).abs().max()):.2e}")
    rho = spearmanr(exact["loss"].numpy(), grad.numpy()).statistic
    print(f"Spearman(gradient, exact):         {rho:.3f}")


if __name__ == "__main__":
    main()
