"""`train.lr: auto` against a sweep of fixed rates (issue #39), measured: per bundled model,
task (the sample sentiment and emotion sets), method (plain, P-tuning, residual) and seed, the
test accuracy of a run with `lr: auto` and of runs at each rate of the sweep (same steps, same
batches: a function of the seed and the step alone), the bare model's zero-shot accuracy, and
the search's wall time against a run's.

Targets (issue #39): auto within 2 points of the sweep's best in >= 90% of cells, never below
zero-shot; the search <= 30% of a run's time.

The grid runs in phases, each appending one JSON line per result to --log, so a long grid can
be split into commands of a few minutes and a report made from what finished:

  sweep   per cell: the range test alone (its curve at each of --curves steps, nothing trained),
          then one run at each rate of --lrs; per model and task the zero-shot accuracy
  auto    per cell: one run with `lr: auto` (the search included, as a user runs it)
  report  the tables from --log (its --models and --seeds): auto against the sweep, what each
          rule of lr_finder.RULES would pick from the recorded curves, each way of choosing a
          rate's loss against the best (regret), with --noise how far a run moves when its
          rate moves by a few percent

Run: .venv/bin/python benchmarks/bench_lr.py {sweep,auto,report} --log FILE
     [--models smollm2-135m gemma3-270m] [--tasks sentiment emotion]
     [--methods prompt p_tuning residual] [--seeds 0 1 2] [--steps 20]
     [--search-steps 20] [--curves 20 30] [--lrs 0.001 0.003 0.01 0.03 0.1]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, machine

from softprompt.config import load_config
from softprompt.errors import ConfigError, SoftpromptError
from softprompt.models import load_backbone
from softprompt.session import Session
from softprompt.training import lr_finder
from softprompt.training.console import Interrupted
from softprompt.training.trainer import Trainer

CONFIGS = {"sentiment": "sentiment.yaml", "emotion": "emotion.yaml"}
METHODS = {
    "prompt": "",
    "p_tuning": ", encoder: mlp, encoder_hidden_size: 128",
    "residual": ", bottleneck: 128, layer_norm: true",
}
EXAMPLES = ["sentiment-p-tuning.yaml", "sentiment-residual.yaml", "sentiment.yaml", "emotion.yaml"]
CELL = ("model", "task", "method", "seed")
TOLERANCE = 1e-6  # accuracies come back as float32: 89/100 against 91/100 - 2 points is a tie


def cell_config(cell: dict, lr, steps: int, search_steps: int):
    """The config of one run of `cell` at rate `lr` (a number or "auto")."""
    method, seed, task = cell["method"], cell["seed"], cell["task"]
    overrides = [
        f"method={method}",
        f"models={json.dumps([cell['model']])}",
        f"task.data={ROOT / 'examples/data' / task}",
        f"prompt={{length: 16, init: vocab, seed: {seed}{METHODS[method]}}}",
        f"train={{steps: {steps}, batch_size: 8, lr: {lr}, schedule: cosine, "
        f"warmup: 0.1, eval_every: {steps}, checkpoint_every: {steps}, seed: {seed}, "
        f"precision: auto, lr_search_steps: {search_steps}}}",
    ]
    return load_config(ROOT / "examples/configs" / CONFIGS[cell["task"]], overrides)


def train_run(backbone, cell: dict, lr, args) -> dict:
    """One training run of `cell` at rate `lr`: test accuracy, the rate used, seconds."""
    config = cell_config(cell, lr, args.steps, args.search_steps)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = Trainer(config, f"{folder}/run", backbones=[backbone], progress=False).run()
        seconds = time.perf_counter() - started
        session = Session(f"{folder}/run/last.safetensors", backbone)
        data = str(ROOT / "examples/data" / cell["task"])
        accuracy = session.evaluate(data, split="test")["accuracy"]
    search = summary["lr_search"] or {}
    return {
        "accuracy": accuracy,
        "lr": summary["lr"],
        "seconds": seconds,
        "search_seconds": search.get("seconds", 0.0),
        "rule": search.get("rule"),
        "alternatives": search.get("alternatives"),
    }


def search_only(backbone, cell: dict, steps: int, batches: str, args) -> dict:
    """The range test of `cell` alone (what `lr: auto` runs before training): its curve, on the
    first few batches in turn ("cycled", what lr auto does) or a new batch a step ("fresh")."""
    config = cell_config(cell, "auto", max(args.steps, steps), steps)
    cycle = lr_finder.WINDOW if batches == "cycled" else None
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(config, f"{folder}/run", backbones=[backbone], progress=False)
        started = time.perf_counter()
        rates, losses = lr_finder.run_range_test(trainer, cycle)
        seconds = time.perf_counter() - started
    return {
        "range": list(config.train.lr_search_range),
        "rates": rates,
        "losses": losses,
        "seconds": seconds,
    }


def zero_shot(backbone, task: str) -> float:
    """The bare model's test accuracy with the task's template and verbalizer."""
    config = ROOT / "examples/configs" / CONFIGS[task]
    session = Session(None, backbone, config=str(config))
    return session.evaluate(str(ROOT / "examples/data" / task), split="test")["accuracy"]


def append(log: Path, row: dict) -> None:
    with log.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k not in ("rates", "losses")}), flush=True)


def read_log(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line]


def key(row: dict) -> tuple:
    """What makes a result: its kind, cell, and steps, rate or search length."""
    extra = {
        "fixed": ("steps", "lr"),
        "auto": ("steps", "search_steps"),
        "search": ("search_steps", "batches"),
    }
    if row["kind"] == "search":
        row = {"batches": "fresh", **row}  # the first rows, before cycled batches, had none
    if row["kind"] == "example":
        return ("example", row["config"], row["model"], row["lr_mode"])
    return (row["kind"], *(row.get(name) for name in CELL + extra.get(row["kind"], ())))


def attempt(row: dict, measure, *args) -> dict:
    """`row` with what `measure(*args)` returns, or with the error of a run that failed (lr auto
    found no rate, or the loss went non-finite): a result too."""
    try:
        return {**row, **measure(*args)}
    except Interrupted:  # the command's time ran out: not a result, the next command redoes it
        raise
    except SoftpromptError as error:
        return {**row, "error": str(error)}


def phase_rows(args, backbone, cell: dict, have: set):
    """The results the phase still owes for `cell` (skipping those already in the log)."""
    if args.phase == "auto":
        row = {"kind": "auto", **cell, "steps": args.steps, "search_steps": args.search_steps}
        if key(row) not in have:
            yield attempt(row, train_run, backbone, cell, "auto", args)
        return
    for steps in args.curves:
        for batches in args.curve_batches:
            row = {"kind": "search", **cell, "search_steps": steps, "batches": batches}
            if key(row) not in have:
                yield {**row, **search_only(backbone, cell, steps, batches, args)}
    for lr in args.lrs:
        row = {"kind": "fixed", **cell, "steps": args.steps, "lr": lr}
        if key(row) not in have:
            yield attempt(row, train_run, backbone, cell, lr, args)


def run_phase(args) -> None:
    """The sweep or auto phase over the grid, appending to --log, skipping what it holds."""
    log = Path(args.log)
    have = {key(row) for row in read_log([log])} if log.exists() else set()
    print(machine(), flush=True)
    for model in args.models:
        backbone = load_backbone(model)
        for task in args.tasks:
            bare = {"kind": "zero_shot", "model": model, "task": task}
            if args.phase == "sweep" and key(bare) not in have:
                append(log, {**bare, "accuracy": zero_shot(backbone, task)})
            for seed in args.seeds:  # seed-major: every method of a seed before the next seed
                for method in args.methods:
                    cell = {"model": model, "task": task, "method": method, "seed": seed}
                    for row in phase_rows(args, backbone, cell, have):
                        append(log, row)


def example_run(backbone, name: str, model: str, lr: str) -> dict:
    """One example config (examples/configs/NAME) as documented, on `model`, at its own rate
    (`lr` "config") or with `lr: auto`: test accuracy, rate used, seconds."""
    overrides = [f"models={json.dumps([model])}"] + ([] if lr == "config" else [f"train.lr={lr}"])
    config = load_config(ROOT / "examples/configs" / name, overrides)
    data = str(ROOT / config.task.data)
    config = config.model_copy(update={"task": config.task.model_copy(update={"data": data})})
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        summary = Trainer(config, f"{folder}/run", backbones=[backbone], progress=False).run()
        seconds = time.perf_counter() - started
        accuracy = Session(f"{folder}/run/last.safetensors", backbone).evaluate(data)["accuracy"]
        bare = Session(None, backbone, config=str(ROOT / "examples/configs" / name))
    search = summary["lr_search"] or {}
    return {
        "kind": "example",
        "config": name,
        "model": model,
        "steps": config.train.steps,
        "lr_mode": lr,
        "lr": summary["lr"],
        "accuracy": accuracy,
        "zero_shot": bare.evaluate(data)["accuracy"],
        "dev": summary.get("dev"),
        "seconds": seconds,
        "search_seconds": search.get("seconds", 0.0),
        "rule": search.get("rule"),
        "alternatives": search.get("alternatives"),
    }


def run_examples(args) -> None:
    """The example configs at their documented steps, at their own rate and with lr auto."""
    log = Path(args.log)
    have = {key(row) for row in read_log([log])} if log.exists() else set()
    print(machine(), flush=True)
    for model in args.models:
        backbone = load_backbone(model)
        for name in args.configs:
            for lr in args.lr_modes:
                row = {"kind": "example", "config": name, "model": model, "lr_mode": lr}
                if key(row) not in have:
                    append(log, attempt(row, example_run, backbone, name, model, lr))


def nearest(rates, rate: float) -> float:
    """The sweep's rate nearest `rate` on a log scale."""
    return min(rates, key=lambda r: abs(math.log(r / rate)))


def gather(rows: list[dict], steps: int) -> dict:
    """Per cell: zero-shot, the sweep {lr: result}, the auto run and the curves."""
    cells, bare = {}, {}
    for row in rows:
        if row["kind"] == "zero_shot":
            bare[row["model"], row["task"]] = row["accuracy"]
            continue
        if row.get("steps", steps) != steps:
            continue
        cell = cells.setdefault(tuple(row[name] for name in CELL), {"sweep": {}, "curves": {}})
        if row["kind"] == "fixed":
            cell["sweep"][row["lr"]] = row
        elif row["kind"] == "auto":
            cell["auto"] = row
        else:
            cell["curves"][f"{row['search_steps']} {row.get('batches', 'fresh')}"] = row
    for name, cell in cells.items():
        cell["zero_shot"] = bare.get(name[:2], math.nan)
    return {name: cell for name, cell in cells.items() if cell["sweep"]}


def picks(curve: dict) -> dict[str, float]:
    """What each rule reads off a recorded curve (empty when no rate can be read)."""
    try:
        return lr_finder.read_curve(curve["rates"], curve["losses"]).picks
    except ConfigError:  # the loss never fell or diverged at once: nothing to pick
        return {}


def auto_table(cells: dict) -> list[str]:
    """auto against the sweep, one line per cell that has both."""
    lines = [
        "| model | task | method | seed | zero-shot | sweep worst (lr) | sweep best (lr) "
        "| auto (lr found) | auto - best | search s / run s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    near = above = count = 0
    for (model, task, method, seed), cell in sorted(cells.items()):
        sweep, auto = cell["sweep"], cell.get("auto")
        best = max(sweep.values(), key=lambda r: r["accuracy"])
        worst = min(sweep.values(), key=lambda r: r["accuracy"])
        row = f"| {model} | {task} | {method} | {seed} | {cell['zero_shot']:.3f} "
        row += f"| {worst['accuracy']:.3f} ({worst['lr']:g}) "
        row += f"| {best['accuracy']:.3f} ({best['lr']:g}) "
        if auto is None or "error" in auto:
            lines.append(row + ("| not run | | |" if auto is None else "| no rate found | | |"))
            count += auto is not None
            continue
        run_s = auto["seconds"] - auto["search_seconds"]
        row += f"| {auto['accuracy']:.3f} ({auto['lr']:.2g}) "
        row += f"| {auto['accuracy'] - best['accuracy']:+.3f} "
        lines.append(row + f"| {auto['search_seconds']:.0f} / {run_s:.0f} |")
        count += 1
        near += auto["accuracy"] >= best["accuracy"] - 0.02 - TOLERANCE
        above += auto["accuracy"] >= cell["zero_shot"] - TOLERANCE
    lines.append(
        f"\nauto within 2 points of the sweep's best: {near}/{count} cells; "
        f"not below zero-shot: {above}/{count}"
    )
    return lines


def seed_mean_table(cells: dict) -> list[str]:
    """auto against the sweep over seeds: per model, task and method, the mean accuracy of
    the auto runs against the mean at each fixed rate (the best rate chosen on the means), on
    the seeds that have both; one seed's 20-step run moves by more than the 2-point target."""
    groups: dict[tuple, list[dict]] = {}
    for (model, task, method, _seed), cell in sorted(cells.items()):
        auto = cell.get("auto")
        if auto is not None and "error" not in auto:
            groups.setdefault((model, task, method), []).append(cell)
    lines = [
        "| model | task | method | seeds | zero-shot | sweep worst mean (lr) "
        "| sweep best mean (lr) | auto mean | auto - best |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    near = above = 0
    for (model, task, method), group in groups.items():
        rates = set.intersection(*(set(c["sweep"]) for c in group))
        means = {lr: statistics.mean(c["sweep"][lr]["accuracy"] for c in group) for lr in rates}
        best, worst = max(means, key=means.get), min(means, key=means.get)
        auto = statistics.mean(c["auto"]["accuracy"] for c in group)
        zero = group[0]["zero_shot"]
        near += auto >= means[best] - 0.02 - TOLERANCE
        above += auto >= zero - TOLERANCE
        lines.append(
            f"| {model} | {task} | {method} | {len(group)} | {zero:.3f} "
            f"| {means[worst]:.3f} ({worst:g}) | {means[best]:.3f} ({best:g}) | {auto:.3f} "
            f"| {auto - means[best]:+.3f} |"
        )
    lines.append(
        f"\nover seeds: auto within 2 points of the best rate's mean: {near}/{len(groups)}; "
        f"not below zero-shot: {above}/{len(groups)}"
    )
    return lines


def sources(cell: dict) -> list[tuple[str, dict]]:
    """(search steps, each rule's pick) from the cell's recorded curves, else from its auto
    run's search (summary.json's alternatives)."""
    found = [(steps, picks(curve)) for steps, curve in sorted(cell["curves"].items())]
    auto = cell.get("auto") or {}
    if auto.get("alternatives") and f"{auto['search_steps']} cycled" not in cell["curves"]:
        found.append((f"{auto['search_steps']} cycled", auto["alternatives"]))
    return found


def sweep_table(cells: dict) -> list[str]:
    """Every cell's test accuracy at each rate of the sweep."""
    rates = sorted({lr for cell in cells.values() for lr in cell["sweep"]})
    lines = ["| cell | zero-shot | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |"]
    lines.append("| --- | --- |" + " --- |" * len(rates))
    for name, cell in sorted(cells.items()):
        results = [cell["sweep"].get(lr, {}) for lr in rates]
        texts = [
            "-" if not r else "failed" if "error" in r else f"{r['accuracy']:.3f}" for r in results
        ]
        lines.append(
            f"| {' '.join(map(str, name))} | {cell['zero_shot']:.3f} | " + " | ".join(texts) + " |"
        )
    return lines


def rule_table(cells: dict) -> list[str]:
    """Each rule's pick from each recorded curve, scored by the sweep's accuracy at the sweep
    rate nearest the pick (an estimate: that rate, not the pick, was trained)."""
    scores: dict[tuple, list[int]] = {}
    lines = ["| cell | search steps | " + " | ".join(lr_finder.RULES) + " |"]
    lines.append("| --- | --- |" + " --- |" * len(lr_finder.RULES))
    for name, cell in sorted(cells.items()):
        best = max(r["accuracy"] for r in cell["sweep"].values())
        for steps, found in sources(cell):
            texts = []
            for rule in lr_finder.RULES:
                if rule not in found:
                    texts.append("none")
                    continue
                at = cell["sweep"][nearest(cell["sweep"], found[rule])]["accuracy"]
                scores.setdefault((rule, steps), []).append(at >= best - 0.02 - TOLERANCE)
                outside = not min(cell["sweep"]) / 2 <= found[rule] <= 2 * max(cell["sweep"])
                texts.append(f"{found[rule]:.2g}{'*' if outside else ''} -> {at:.2f}")
            lines.append(
                f"| {' '.join(map(str, name))} (best {best:.2f}) | {steps} | "
                + " | ".join(texts)
                + " |"
            )
    lines.append("\n(* more than 2x outside the sweep: scored at the sweep's end, not measured)")
    for (rule, steps), hits in sorted(scores.items()):
        lines.append(
            f"{rule} (search: {steps}): nearest sweep rate within 2 points of the "
            f"best in {sum(hits)}/{len(hits)} cells"
        )
    return lines


def regret_lines(cells: dict) -> list[str]:
    """Per model and seed: how far under each cell's best sweep rate each way of choosing a rate
    lands, on average over the cells: every fixed rate of the sweep, each rule (the sweep's
    accuracy at the rate nearest its pick, from the cycled 20-step curve) and the trained auto
    runs. A fixed rate that does as well as the rules says the curve adds nothing there."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    counts: dict[tuple, int] = {}
    for (model, _task, _method, seed), cell in sorted(cells.items()):
        sweep = {lr: r["accuracy"] for lr, r in cell["sweep"].items() if "error" not in r}
        if len(sweep) < 5:
            continue
        best = max(sweep.values())
        losses = {f"fixed {lr:g}": best - accuracy for lr, accuracy in sweep.items()}
        for rule, rate in dict(sources(cell)).get("20 cycled", {}).items():
            losses[rule] = best - sweep[nearest(sweep, rate)]
        auto = cell.get("auto")
        if auto is not None and "error" not in auto:
            losses["auto, trained"] = best - auto["accuracy"]
        for group in ((model, seed), (model, "all")):  # each seed, and the model over all seeds
            counts[group] = counts.get(group, 0) + 1
            for name, loss in losses.items():
                groups.setdefault(group, {}).setdefault(name, []).append(loss)
    present = {name for losses in groups.values() for name in losses}
    fixed = sorted((n for n in present if n.startswith("fixed")), key=lambda n: float(n[6:]))
    names = fixed + [n for n in [*lr_finder.RULES, "auto, trained"] if n in present]
    lines = [
        "| model | seed | cells | " + " | ".join(names) + " |",
        "| --- | --- | --- |" + " --- |" * len(names),
    ]
    for (model, seed), losses in sorted(groups.items(), key=lambda item: str(item[0])):
        texts = [f"{statistics.mean(losses[n]) * 100:.1f}" if n in losses else "-" for n in names]
        lines.append(f"| {model} | {seed} | {counts[model, seed]} | " + " | ".join(texts) + " |")
    lines.append("\n(points of accuracy under the sweep's best, mean over the cells)")
    return lines


def cost_lines(rows: list[dict]) -> list[str]:
    """The search's seconds against a run's, per model, search length and run length."""
    runs, searches = {}, {}
    for row in rows:
        if row["kind"] == "fixed":
            runs.setdefault((row["model"], row["steps"]), []).append(row["seconds"])
        elif row["kind"] == "search":
            name = (row["model"], row["search_steps"])
            searches.setdefault(name, []).append(row["seconds"])
    lines = []
    for (model, steps), seconds in sorted(searches.items()):
        search = sum(seconds) / len(seconds)
        for (run_model, run_steps), run in sorted(runs.items()):
            if run_model == model:
                mean = sum(run) / len(run)
                lines.append(
                    f"{model}: {steps}-step search {search:.1f} s (mean of {len(seconds)}) "
                    f"against a {run_steps}-step run {mean:.1f} s (mean of {len(run)}, "
                    f"its dev evaluation included): {search / mean:.0%}"
                )
    return lines


def chance_within(sigma: float, margin: float = 0.02, rates: int = 5) -> tuple[float, float]:
    """The chance that one run lands within `margin` of the best of a `rates`-rate sweep when
    every run's accuracy carries independent noise of sd `sigma` (the rule assumed perfect):
    where one sweep rate is far above the rest (its one run against auto's) and where all
    `rates` are equally good (the best of `rates` draws against one)."""
    if sigma <= 0:
        return 1.0, 1.0
    normal = statistics.NormalDist()
    peaked = normal.cdf(margin / (sigma * math.sqrt(2)))
    grid = [i / 100 for i in range(-800, 801)]
    flat = sum(normal.pdf(x) * normal.cdf(x + margin / sigma) ** rates for x in grid) / 100
    return peaked, flat


def noise_lines(rows: list[dict]) -> list[str]:
    """How much one 20-step run's accuracy moves when the rate moves by a few percent (runs at
    rates within 10% of each other, --noise log), and what that noise allows of the 2-point
    target even for a rule that always finds the best rate."""
    cells: dict[tuple, dict[float, float]] = {}
    for row in rows:
        if row["kind"] == "fixed" and "error" not in row:
            cells.setdefault(tuple(row[name] for name in CELL), {})[row["lr"]] = row["accuracy"]
    lines, deviations = [], []
    for name, runs in sorted(cells.items()):
        if len(runs) < 3:
            continue
        values = [runs[lr] for lr in sorted(runs)]
        deviations.append(statistics.stdev(values))
        spread = (max(values) - min(values)) * 100
        lines.append(
            f"{' '.join(map(str, name))}: rates {min(runs):g}-{max(runs):g}: "
            + " ".join(f"{v:.3f}" for v in values)
            + f" (sd {deviations[-1] * 100:.1f} points, range {spread:.0f})"
        )
    if not deviations:
        return lines
    sigma = math.sqrt(statistics.mean(d * d for d in deviations))
    for seeds in (1, 3):
        peaked, flat = chance_within(sigma / math.sqrt(seeds))
        lines.append(
            f"pooled sd {sigma * 100:.1f} points; over the mean of {seeds} seed(s), a perfect rule "
            f"lands within 2 points of the sweep's best with chance {peaked:.0%} (one rate far "
            f"best) to {flat:.0%} (five rates equally good)"
        )
    need = 0.02 / (math.sqrt(2) * 1.2816)
    lines.append(f"90% needs an sd of at most {need * 100:.1f} points per mean (one rate far best)")
    return lines


def choose(cells: dict, source: str) -> str:
    """The rule whose picks from the `source` curves ("20 cycled") land on a sweep rate within 2
    points of the sweep's best in the most cells (ties: the first in lr_finder.RULES)."""
    hits = dict.fromkeys(lr_finder.RULES, 0)
    for cell in cells.values():
        best = max(r["accuracy"] for r in cell["sweep"].values())
        for steps, found in sources(cell):
            for rule, rate in found.items() if steps == source else ():
                at = cell["sweep"][nearest(cell["sweep"], rate)]["accuracy"]
                hits[rule] += at >= best - 0.02 - TOLERANCE
    return max(hits, key=lambda rule: (hits[rule], -list(lr_finder.RULES).index(rule)))


def example_table(rows: list[dict]) -> list[str]:
    """The example configs at their documented steps, at their own rate and with lr auto."""
    lines = [
        "| config | model | steps | lr | zero-shot | test accuracy | dev accuracy | seconds "
        "(search) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    examples = sorted(
        (row for row in rows if row["kind"] == "example"),
        key=lambda row: (row["model"], row["config"], row["lr_mode"] != "config"),
    )
    for r in examples:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['model']} | | {r['lr_mode']} | | failed | | |")
            continue
        lr = f"{r['lr']:g}" if r["lr_mode"] == "config" else f"auto: {r['lr']:.2g} ({r['rule']})"
        dev = (r.get("dev") or {}).get("mean", {}).get("accuracy", math.nan)
        lines.append(
            f"| {r['config']} | {r['model']} | {r['steps']} | {lr} | {r['zero_shot']:.3f} "
            f"| {r['accuracy']:.3f} | {dev:.3f} | {r['seconds']:.0f} ({r['search_seconds']:.0f}) |"
        )
    return lines + example_verdicts(examples)


def example_verdicts(examples: list[dict]) -> list[str]:
    """The targets on the example configs: each >= 5 points above zero-shot; auto against the
    config's own rate; the search's share of an auto run."""
    done = [r for r in examples if "error" not in r]
    above = sum(r["accuracy"] >= r["zero_shot"] + 0.05 - TOLERANCE for r in done)
    own = {(r["model"], r["config"]): r["accuracy"] for r in done if r["lr_mode"] == "config"}
    autos = [r for r in done if r["lr_mode"] != "config" and (r["model"], r["config"]) in own]
    near = sum(r["accuracy"] >= own[r["model"], r["config"]] - 0.02 - TOLERANCE for r in autos)
    shares = [r["search_seconds"] / (r["seconds"] - r["search_seconds"]) for r in autos]
    lines = [f"\n>= 5 points above zero-shot: {above}/{len(done)} runs"]
    if autos:
        lines.append(
            f"auto within 2 points of the config's own rate: {near}/{len(autos)}; the search "
            f"{min(shares):.0%}-{max(shares):.0%} of the rest of the run"
        )
    return lines


def report(args) -> None:
    rows = [
        row
        for row in read_log([Path(path) for path in args.log.split(",")])
        if row["model"] in args.models and row.get("seed", args.seeds[0]) in args.seeds
        if row["kind"] != "auto" or not args.rule or row.get("rule", args.rule) == args.rule
    ]
    cells = gather(rows, args.steps)
    if args.choose:
        print(choose(cells, f"{args.search_steps} cycled"))
        return
    tables = [*auto_table(cells), "", *seed_mean_table(cells), "", *sweep_table(cells)]
    print("\n".join([*tables, "", *rule_table(cells), "", *regret_lines(cells)]))
    print("\n".join(["", *cost_lines(rows), "", *example_table(rows)]))
    if args.noise:
        print("\n".join(["", *noise_lines(read_log([Path(args.noise)]))]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["sweep", "auto", "examples", "report"])
    parser.add_argument("--log", required=True, help="JSON lines file (report: comma-separated)")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--tasks", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--search-steps", type=int, default=20, help="auto runs' search")
    parser.add_argument(
        "--curves", type=int, nargs="*", default=[20, 30], help="sweep: range tests alone"
    )
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1])
    parser.add_argument(
        "--curve-batches", nargs="+", default=["cycled"], choices=["cycled", "fresh"]
    )
    parser.add_argument("--configs", nargs="+", default=EXAMPLES, help="examples phase")
    parser.add_argument("--lr-modes", nargs="+", default=["config", "auto"], help="examples phase")
    parser.add_argument(
        "--rule", choices=list(lr_finder.RULES), help="auto, examples: the rule; report: its runs"
    )
    parser.add_argument("--choose", action="store_true", help="report: print the best rule only")
    parser.add_argument("--noise", help="report: a sweep log of rates within 10%% of each other")
    args = parser.parse_args()
    lr_finder.RULE = args.rule or lr_finder.RULE
    started = time.perf_counter()
    {"report": report, "examples": run_examples}.get(args.phase, run_phase)(args)
    if not args.choose:
        print(f"{args.phase}: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
