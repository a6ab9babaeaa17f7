"""A refactor's "keep the speed" check: the same commands from an older checkout and from this
one, in turns (old, new, old, new, ...), so both see the same machine load.

Two measures: `softprompt predict PROMPT --input FILE` as a user runs it (wall time of the
whole command, model load included), and softprompt's training step from
`bench_train_vs_peft.py` (samples/s, float32).
Run: .venv/bin/python benchmarks/bench_before_after.py --before /path/to/old/checkout
     --prompt runs/x/prompt.safetensors [--rounds 4]
(make the old checkout with `git worktree add --detach /tmp/before COMMIT`)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, median

CLI = "from softprompt.cli import main; main()"
SPEED = re.compile(r"softprompt ([0-9.]+) samples/s")


def run_in(tree: Path, args: list[str]) -> str:
    """Run a command with `tree`'s sources first on the path; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, check=True)
    return done.stdout


def predict_seconds(tree: Path, prompt: Path, data: Path) -> float:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-c", CLI, "predict", str(prompt), "--input"]
        command += [str(data), "--output", f"{out}/predictions.jsonl"]
        start = time.perf_counter()
        run_in(tree, command)
        return time.perf_counter() - start


def train_speed(tree: Path) -> float:
    script = tree / "benchmarks/bench_train_vs_peft.py"
    out = run_in(tree, [sys.executable, str(script), "--rounds", "2", "--precision", "fp32"])
    return float(SPEED.search(out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="older checkout")
    parser.add_argument("--prompt", type=Path, required=True, help="a sentiment prompt")
    parser.add_argument("--data", type=Path, default=ROOT / "examples/data/sentiment/test.jsonl")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    print(machine())
    trees = {"before": args.before.resolve(), "after": ROOT}
    predict = {name: [] for name in trees}
    train = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            predict[name].append(predict_seconds(tree, args.prompt.resolve(), args.data))
            train[name].append(train_speed(tree))
    for name in trees:
        print(
            f"{name}: predict --input {median(predict[name]):.2f} s (median of {args.rounds}), "
            f"training {median(train[name]):.2f} samples/s"
        )
    print(
        f"after/before: predict time {median(predict['after']) / median(predict['before']):.2f}x, "
        f"training speed {median(train['after']) / median(train['before']):.2f}x"
    )


if __name__ == "__main__":
    main()
