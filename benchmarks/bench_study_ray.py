"""A 4-run study grid one after another against the same grid on a local Ray runtime with
`--cpus-per-run 1` (issue #25: target <= 0.75x the sequential wall time on a 2-core machine,
two runs at once). Both are the whole `softprompt study` command as a user runs it, model
loads and Ray's start included, in turns (sequential, Ray, sequential, Ray, ...), on the
bundled SmolLM2 and the sample sentiment task (2 training seeds x 2 init seeds); `--tiny`
instead trains a small random Llama built here (hidden 64), a run that two torch threads do
not speed up, as the grid's point of comparison where one run cannot use both cores.

Run: .venv/bin/python benchmarks/bench_study_ray.py [--steps 16] [--rounds 2] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import ROOT, machine

SOFTPROMPT = Path(sys.executable).parent / "softprompt"


def tiny_model(folder: Path) -> Path:
    """A random Llama of hidden size 64 over the sample data's words."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import corpus
    from softprompt.models.tiny import save_tiny

    return save_tiny(folder, corpus(), "llama", seed=0, hidden=64)


def write_study(folder: Path, steps: int, model: str) -> Path:
    study = {
        "config": str(ROOT / "examples/configs/sentiment.yaml"),
        "set": [
            f"train.steps={steps}",
            f"train.eval_every={steps}",
            f"train.checkpoint_every={steps}",
            f"task.data={ROOT / 'examples/data/sentiment'}",
        ],
        "model_sets": [[model]],
        "train_seeds": [1, 2],
        "init_seeds": [0, 1],
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def timed_study(study: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    """Wall seconds of one `softprompt study` into a fresh folder, and its result."""
    shutil.rmtree(out, ignore_errors=True)
    command = [str(SOFTPROMPT), "study", str(study), "--out", str(out), "--quiet", "--json"]
    started = time.perf_counter()
    done = subprocess.run([*command, *extra], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"study failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tiny", action="store_true", help="A small random Llama instead.")
    args = parser.parse_args()
    print(machine())
    times: dict[str, list[float]] = {"sequential": [], "ray": []}
    with tempfile.TemporaryDirectory() as folder:
        if args.tiny:
            args.model = str(tiny_model(Path(folder) / "tiny"))
        study = write_study(Path(folder), args.steps, args.model)
        for round_ in range(args.rounds):
            for name, extra in (("sequential", []), ("ray", ["--ray", "--cpus-per-run", "1"])):
                seconds, result = timed_study(study, Path(folder) / name, extra)
                times[name].append(seconds)
                scores = [r["score"] for r in result["runs"]]
                print(f"  round {round_ + 1} {name}: {seconds:.1f} s, dev scores {scores}")
    sequential, on_ray = (statistics.median(times[k]) for k in ("sequential", "ray"))
    shown = "a random Llama, hidden 64" if args.tiny else args.model
    print(f"4 runs of {args.steps} steps on {shown}, {args.rounds} rounds in turns")
    print(f"sequential: {sequential:.1f} s (median); ray --cpus-per-run 1: {on_ray:.1f} s")
    print(f"ray/sequential wall time: {on_ray / sequential:.2f}x (target <= 0.75x)")


if __name__ == "__main__":
    main()
