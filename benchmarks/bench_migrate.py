"""`softprompt migrate` on the bundled models: a classification prompt trained with labels on
one model, moved to the other with the train split's texts only (no labels in the inputs
file), scored on the test split.

Per task and seed, each model gets a prompt trained WITH labels for `--steps` steps (the
task's example config, fp32): it is the teacher in one direction and the ceiling in the other
(cached in `--cache`, so the directions and recipes of later commands reuse it). Rows, per
direction: the teacher on its own model, the target's zero-shot, the `transfer` map, the
ceiling, the accuracy of each distillation target itself (the teacher, the shifted own
zero-shot, the ensemble: what a student that matched it exactly would score), and the
migrated prompt by recipe and by number of unlabelled inputs. One JSON line per row goes to
stdout and is appended to `--log`; `--table LOG` prints the Markdown table over seeds.

    python benchmarks/bench_migrate.py --task sentiment --seed 0 --steps 50 \
        --directions smollm2-135m:gemma3-270m --recipes plain,post,ensemble --inputs all \
        --log /tmp/migrate.jsonl
    python benchmarks/bench_migrate.py --table /tmp/migrate.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from common import ROOT, machine
from safetensors.torch import save_file

from softprompt.config import config_to_dict, load_config
from softprompt.crossmodel.transfer import transfer_prompt
from softprompt.data import DataSpec, load_split
from softprompt.migration import migrate
from softprompt.migration.classify import teacher_distributions
from softprompt.models import load_backbone
from softprompt.session import Session
from softprompt.tasks.distill import distill_target
from softprompt.training.trainer import train

TASKS = {"sentiment": "sentiment.yaml", "emotion": "emotion.yaml"}
SUFFIX_TASKS = {"smiley": "smiley.yaml", "smiley-ja": "smiley-ja.yaml"}
# recipe: (shift_weight, reference, own_weight)
RECIPES = {
    "plain": (0.0, "teacher", 0.5),
    "post": (0.5, "teacher", 0.5),
    "shifted": (0.5, "shifted", 0.5),
    "ensemble": (0.0, "ensemble", 0.5),
    "ensemble+shift": (0.5, "ensemble", 0.5),
}
TARGET_WEIGHTS = (0.25, 0.5, 0.75)  # own_weight values whose ensemble target is scored


def task_config(task: str, folder: Path, steps: int | None, seed: int) -> Path:
    """The task's example config with the benchmark's steps (None: the config's own), seed and
    fp32, as a YAML file that both the supervised runs and the migrations (`migrate --config`)
    read."""
    source = ROOT / "examples" / "configs" / {**TASKS, **SUFFIX_TASKS}[task]
    steps = steps or load_config(source).train.steps
    every = max(1, steps // 2)
    overrides = [
        f"train.steps={steps}",
        "train.precision=fp32",
        f"train.eval_every={every}",
        f"train.checkpoint_every={every}",
        f"train.seed={seed}",
        f"prompt.seed={seed}",
    ]
    raw = config_to_dict(load_config(source, overrides))
    path = folder / f"{task}-{steps}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def supervised(backbone, spec: str, config: Path, cache: Path) -> tuple[Path, float]:
    """A prompt trained with labels on `backbone` (cached by task, model, steps and seed)."""
    done = cache / f"{config.stem}-{Path(spec).name}.safetensors"
    seconds_file = done.with_suffix(".seconds")
    if not done.is_file():
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            train(
                load_config(config, [f"models=[{spec}]"]), tmp, progress=False, backbones=[backbone]
            )
            (Path(tmp) / "prompt.safetensors").replace(done)
        seconds_file.write_text(f"{time.perf_counter() - started:.1f}")
    return done, float(seconds_file.read_text())


def split(task: str, name: str):
    config = load_config(ROOT / "examples" / "configs" / TASKS[task]).task
    spec = DataSpec(
        source=str(ROOT / config.data), label_field=config.label_field, text_field="text"
    )
    return load_split(spec, name)


def distributions(prompt, backbone, config: Path, examples) -> tuple[torch.Tensor, torch.Tensor]:
    """log p (with the prompt; the bare model's when `prompt` is None) and log p0 (bare)."""
    session = Session(prompt, backbone, config=config)
    return teacher_distributions(session, examples)


def accuracy(log_probs: torch.Tensor, gold: torch.Tensor) -> float:
    return float((log_probs.argmax(-1) == gold).float().mean())


def inputs_file(task: str, count: str, folder: Path) -> Path:
    """The first `count` (or all) train texts, without their labels."""
    examples = split(task, "train")
    examples = examples if count == "all" else examples[: int(count)]
    path = folder / f"{task}-inputs-{count}.jsonl"
    path.write_text("".join(json.dumps({"text": e.text}) + "\n" for e in examples))
    return path


def run(args, emit) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    config = task_config(args.task, work, args.steps, args.seed)
    directions = [tuple(d.split(":")) for d in args.directions.split(",")]
    names = sorted({m for d in directions for m in d})
    backbones = {name: load_backbone(name) for name in names}
    prompts = {name: supervised(backbones[name], name, config, cache) for name in names}
    test = split(args.task, "test")
    labels = load_config(config).task.verbalizer
    gold = torch.tensor([list(labels).index(e.label) for e in test])
    dists = {n: distributions(prompts[n][0], backbones[n], config, test) for n in names}
    if args.dump:
        dump(args, config, names, backbones, prompts, labels, cache)
    for source, target in directions:
        row = _rows(emit, args, f"{source}->{target}")
        log_p, log_p0 = dists[source]
        log_q, log_q0 = dists[target]
        row("teacher on its own model", accuracy(log_p, gold), prompts[source][1])
        row("target zero-shot", accuracy(log_q0, gold))
        row("supervised on target (ceiling)", accuracy(log_q, gold), prompts[target][1])
        mapped = transfer_prompt(prompts[source][0], backbones[target], source=backbones[source])
        row(
            "transfer map",
            accuracy(distributions(mapped, backbones[target], config, test)[0], gold),
        )
        for reference in ("shifted", "ensemble"):
            for weight in TARGET_WEIGHTS if reference == "ensemble" else (0.5,):
                target_logp = distill_target(reference, log_p, log_p0, log_q0, weight)
                row(f"target itself: {reference} b={weight}", accuracy(target_logp, gold))
        for recipe in filter(None, args.recipes.split(",")):
            for count in args.inputs.split(","):
                migrated, seconds = _migrate(
                    args, backbones, prompts, source, target, recipe, count, config, work
                )
                scored = distributions(migrated["path"], backbones[target], config, test)[0]
                row(
                    f"migrate: {recipe}, {count} inputs",
                    accuracy(scored, gold),
                    seconds,
                    agreement=migrated["teacher_agreement"],
                    best_step=migrated["best_step"],
                )


def run_suffix(args, emit) -> None:
    """The smiley prefix (the task's example config, its documented steps, trained on the
    source model) migrated to the target from the train documents' texts alone (they carry
    no smileys); the suffix rate on the test documents' sentence starts, with and without."""
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    config = task_config(args.task, work, args.teacher_steps, args.seed)
    data = ROOT / load_config(config).task.data
    (source, target), *_ = [tuple(d.split(":")) for d in args.directions.split(",")]
    backbones = {name: load_backbone(name) for name in (source, target)}
    teacher, teacher_seconds = supervised(backbones[source], source, config, cache)
    row = _rows(emit, args, f"{source}->{target}")

    def rates(prompt, name: str) -> dict:
        report = Session(prompt, backbones[name], config=config).evaluate(str(data))
        return report["suffix_rate"]

    on_source = rates(teacher, source)
    row("teacher on its own model, with", on_source["with_prefix"], teacher_seconds)
    row("source model without", on_source["without_prefix"])
    for count in args.inputs.split(","):
        texts = [e.text for e in load_split(DataSpec(source=str(data), label_field=None), "train")]
        texts = texts if count == "all" else texts[: int(count)]
        inputs = work / f"documents-{count}.jsonl"
        inputs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        out = work / f"migrated-{count}.safetensors"
        result, seconds = timed_migrate(
            args, teacher, backbones, source, target, inputs, out, config
        )
        on_target = rates(result["path"], target)
        distillation = result["student_start"]["distillation"]
        row(
            f"migrate, {count} documents: with",
            on_target["with_prefix"],
            seconds,
            distillation=distillation,
            documents=len(texts),
        )
        row("target model without", on_target["without_prefix"])


def dump(args, config, names, backbones, prompts, labels, cache) -> None:
    """Each model's label distributions with its supervised prompt and bare, on every split,
    with the gold labels, to `cache` (to study distillation targets without the models)."""
    tensors = {}
    for split_name in ("train", "dev", "test"):
        examples = split(args.task, split_name)
        tensors[f"{split_name}/gold"] = torch.tensor(
            [list(labels).index(e.label) for e in examples]
        )
        for name in names:
            log_p, log_p0 = distributions(prompts[name][0], backbones[name], config, examples)
            tensors[f"{name}/{split_name}/p"], tensors[f"{name}/{split_name}/p0"] = log_p, log_p0
    save_file(tensors, str(cache / f"{config.stem}-distributions.safetensors"))


def _rows(emit, args, direction: str):
    def row(name: str, value: float, seconds: float = 0.0, **extra) -> None:
        emit(
            {
                "task": args.task,
                "seed": args.seed,
                "steps": args.steps,
                "direction": direction,
                "row": name,
                "suffix_rate" if args.task in SUFFIX_TASKS else "accuracy": round(value, 4),
                "seconds": round(seconds, 1),
                **extra,
            }
        )

    return row


def _migrate(args, backbones, prompts, source, target, recipe, count, config, work):
    weight, reference, own = RECIPES[recipe]
    out = work / f"{Path(source).name}-{Path(target).name}-{recipe}-{count}.safetensors"
    inputs = inputs_file(args.task, count, work)
    objective = {"shift_weight": weight, "reference": reference, "own_weight": own}
    teacher = prompts[source][0]
    return timed_migrate(args, teacher, backbones, source, target, inputs, out, config, objective)


def timed_migrate(args, teacher, backbones, source, target, inputs, out, config, objective=None):
    """`migrate` of `teacher` from `source` to `target`: its summary and wall seconds."""
    started = time.perf_counter()
    result = migrate(
        teacher,
        backbones[target],
        inputs,
        out=out,
        source=backbones[source],
        config=config,
        steps=args.steps,
        seed=args.seed,
        progress=False,
        **(objective or {}),
    )
    return result, time.perf_counter() - started


def table(log: Path) -> None:
    """Mean ± standard deviation over seeds, per task, steps, direction and row, with the
    share of the supervised ceiling and of the zero-shot-to-ceiling gap that the mean reaches."""
    latest = {}  # a row measured again (same seed) counts once: its last value
    for line in log.read_text().splitlines():
        r = json.loads(line)
        value = r["suffix_rate"] if "suffix_rate" in r else r["accuracy"]
        latest[(r["task"], r["steps"], r["direction"], r["row"], r["seed"])] = value
    groups: dict[tuple, list[float]] = {}
    for (*key, _seed), value in latest.items():
        groups.setdefault(tuple(key), []).append(value)
    means = {key: statistics.mean(values) for key, values in groups.items()}
    print(
        "| task | direction | row | test accuracy (smiley: suffix rate) | of the ceiling "
        "| of the gap | seeds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (task, steps, direction, name), values in groups.items():
        sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        mean = means[(task, steps, direction, name)]
        ceiling = means.get((task, steps, direction, "supervised on target (ceiling)"))
        zero = means.get((task, steps, direction, "target zero-shot"))
        share = gap = ""
        if ceiling and zero is not None and ceiling > zero:
            share, gap = f"{mean / ceiling:.0%}", f"{(mean - zero) / (ceiling - zero):.0%}"
        print(
            f"| {task} | {direction} | {name} | {mean:.3f}{sd} | {share} | {gap} | {len(values)} |"
        )


COMPACT = {
    "teacher": "teacher on its own model",
    "zero-shot": "target zero-shot",
    "transfer map": "transfer map",
    "ceiling": "supervised on target (ceiling)",
    "plain KL": "migrate: plain, all inputs",
    "KL + shift (POST)": "migrate: post, all inputs",
    "plain, 25 inputs": "migrate: plain, 25 inputs",
    "plain, 100 inputs": "migrate: plain, 100 inputs",
}


def compact(log: Path) -> None:
    """One line per task and direction: the main rows' mean ± sd over seeds (classification)."""
    values: dict[tuple, list[float]] = {}
    latest = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if "accuracy" in r:
            latest[(r["task"], r["steps"], r["direction"], r["row"], r["seed"])] = r["accuracy"]
    for (task, steps, direction, row, _seed), value in latest.items():
        values.setdefault((task, steps, direction, row), []).append(value)
    cells = sorted({k[:3] for k in values}, key=lambda k: (k[0] != "sentiment", k[1], k[2]))
    print("| task | direction | " + " | ".join(COMPACT) + " | seeds |")
    print("| --- | --- |" + " --- |" * (len(COMPACT) + 1))
    for cell in cells:
        shown = []
        for row in COMPACT.values():
            got = values.get((*cell, row), [])
            sd = f" ± {statistics.stdev(got):.3f}" if len(got) > 1 else ""
            shown.append(f"{statistics.mean(got):.3f}{sd}" if got else "-")
        seeds = len(values.get((*cell, COMPACT["ceiling"]), []))
        print(
            f"| {cell[0]} | {cell[2].replace('->', ' → ')} | " + " | ".join(shown) + f" | {seeds} |"
        )


def verdicts(log: Path) -> None:
    """The issue's targets per cell and recipe, seed by seed: the migrated prompt's share of
    that seed's supervised ceiling (>= 95%), whether it is below that seed's zero-shot, and its
    wall time against the teacher's own training (same steps)."""
    rows: dict[tuple, dict] = {}
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if "accuracy" in r:
            rows[(r["task"], r["steps"], r["direction"], r["seed"], r["row"])] = r
    print(
        "| task | direction | recipe, inputs | share of the ceiling per seed | >= 95% "
        "| >= zero-shot | seconds: migration / teacher's training |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    recipes = sorted({k[4] for k in rows if k[4].startswith("migrate: ")})
    for task, steps, direction in sorted({k[:3] for k in rows}):
        for recipe in recipes:
            seeds = sorted(
                k[3] for k in rows if k[:3] == (task, steps, direction) and k[4] == recipe
            )
            if not seeds:
                continue
            shares, times, met, above = [], [], 0, 0
            for seed in seeds:
                key = (task, steps, direction, seed)
                got = rows[(*key, recipe)]
                share = got["accuracy"] / rows[(*key, "supervised on target (ceiling)")]["accuracy"]
                shares.append(f"{share:.1%}")
                teacher = rows[(*key, "teacher on its own model")]["seconds"]
                times.append(f"{got['seconds']:.0f}/{teacher:.0f}")
                met += share >= 0.95
                above += got["accuracy"] >= rows[(*key, "target zero-shot")]["accuracy"]
            print(
                f"| {task} | {direction} | {recipe.removeprefix('migrate: ')} | "
                f"{' / '.join(shares)} | {met} of {len(seeds)} | {above} of {len(seeds)} "
                f"| {' '.join(times)} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=sorted(TASKS) + sorted(SUFFIX_TASKS), default="sentiment")
    parser.add_argument(
        "--teacher-steps", type=int, help="smiley tasks: the teacher prefix's steps (the config's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--directions", default="smollm2-135m:gemma3-270m")
    parser.add_argument("--recipes", default="plain,post,ensemble")
    parser.add_argument("--inputs", default="all", help="counts of unlabelled inputs: 25,100,all")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "bench-migrate"))
    parser.add_argument("--dump", action="store_true", help="save the distributions (cache)")
    parser.add_argument("--log", help="append the JSON rows to this file")
    parser.add_argument("--table", help="print the table of a log and stop")
    parser.add_argument("--verdicts", help="print the targets met, per seed, of a log and stop")
    parser.add_argument("--compact", help="print one line per task and direction of a log")
    args = parser.parse_args()
    for report, log in ((table, args.table), (verdicts, args.verdicts), (compact, args.compact)):
        if log:
            report(Path(log))
            return
    print(machine(), flush=True)

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)
        if args.log:
            with open(args.log, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    (run_suffix if args.task in SUFFIX_TASKS else run)(args, emit)


if __name__ == "__main__":
    main()
