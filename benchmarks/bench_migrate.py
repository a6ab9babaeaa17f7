"""`softprompt migrate` on the bundled models: a sentiment prompt trained on one model, moved to
the other with the train split's texts only (labels unused), scored on the test split.

Rows: the target's zero-shot, the `transfer` map, the teacher on its own model, a prompt
trained WITH labels on the target for the same steps (the ceiling), and the migrated prompt
by recipe (plain KL, KL + shift = POST, KL toward the shifted own zero-shot) and by the
number of unlabelled inputs. Prints one JSON line per row and a Markdown table.

    python benchmarks/bench_migrate.py --source smollm2-135m --target gemma3-270m \
        --steps 40 --inputs 25,100,400
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import ROOT, machine

from softprompt.config import load_config
from softprompt.crossmodel.transfer import transfer_prompt
from softprompt.migration import migrate
from softprompt.models import load_backbone
from softprompt.session import evaluate
from softprompt.training.trainer import train

DATA = ROOT / "examples" / "data" / "sentiment"
CONFIG = ROOT / "examples" / "configs" / "sentiment.yaml"
RECIPES = {"plain KL": (0.0, "teacher"), "KL + shift (POST)": (0.5, "teacher")}
RECIPES["KL to shifted own + shift"] = (0.5, "shifted")


def supervised(backbone, spec: str, steps: int, folder: Path) -> Path:
    """A prompt trained with labels on `backbone` for `steps` steps (the example config)."""
    config = load_config(
        CONFIG,
        [
            f"models=[{spec}]",
            f"train.steps={steps}",
            "train.precision=fp32",
            f"train.eval_every={steps}",
            f"train.checkpoint_every={steps}",
        ],
    )
    train(config, folder, progress=False, backbones=[backbone])
    return folder / "prompt.safetensors"


def accuracy(prompt, backbone) -> float:
    task = load_config(CONFIG).task
    result = evaluate(
        prompt, backbone, str(DATA), template=task.template, verbalizer=task.verbalizer
    )
    return result["accuracy"]


def inputs_file(count: int, folder: Path) -> Path:
    lines = (DATA / "train.jsonl").read_text().splitlines()[:count]
    path = folder / f"inputs-{count}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(args) -> list[dict]:
    source = load_backbone(args.source)
    target = load_backbone(args.target)
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    rows = []

    def row(name: str, value: float, seconds: float = 0.0, **extra) -> None:
        rows.append({"row": name, "accuracy": value, "seconds": round(seconds, 1), **extra})
        print(json.dumps(rows[-1]), flush=True)

    started = time.perf_counter()
    teacher = supervised(source, args.source, args.steps, work / "source")
    teacher_seconds = time.perf_counter() - started
    row("teacher on its own model", accuracy(teacher, source), teacher_seconds)
    row("target zero-shot", accuracy(None, target))
    mapped = transfer_prompt(teacher, target, source=source)
    row("transfer map", accuracy(mapped, target))
    started = time.perf_counter()
    ceiling = supervised(target, args.target, args.steps, work / "ceiling")
    row("supervised on target (ceiling)", accuracy(ceiling, target), time.perf_counter() - started)
    counts = [int(c) for c in args.inputs.split(",")]
    for name, (weight, reference) in RECIPES.items():
        for count in counts if name == args.sweep_recipe else counts[-1:]:
            started = time.perf_counter()
            result = migrate(
                teacher,
                target,
                inputs_file(count, work),
                out=work / f"m-{weight}-{reference}-{count}.safetensors",
                source=source,
                steps=args.steps,
                batch_size=8,
                shift_weight=weight,
                reference=reference,
                progress=False,
            )
            seconds = time.perf_counter() - started
            row(
                f"migrate: {name}, {count} inputs",
                accuracy(result["path"], target),
                seconds,
                agreement=result["teacher_agreement"],
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default="smollm2-135m")
    parser.add_argument("--target", default="gemma3-270m")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--inputs", default="25,100,400")
    parser.add_argument("--sweep-recipe", default="KL + shift (POST)")
    args = parser.parse_args()
    print(machine(), flush=True)
    rows = run(args)
    print(f"\n{args.source} -> {args.target}, sentiment test (100), {args.steps} steps\n")
    print("| row | test accuracy | seconds |\n| --- | --- | --- |")
    for r in rows:
        print(f"| {r['row']} | {r['accuracy']:.3f} | {r['seconds']} |")


if __name__ == "__main__":
    main()
