"""The commands the crash harness kills, each on a tiny random model: train (prompt, prefix,
p_tuning), study, predict --input, generate --input, compress, export --format peft, explain.
Each says what a killed run may leave (absent, the previous version, the reference's) and
what a finished re-run must equal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from crash.harness import Command, json_lines, same_tensors

ROOT = Path(__file__).resolve().parents[2]
SENTIMENT = ROOT / "examples" / "data" / "sentiment"
VERBALIZER = '{"negative": " bad", "positive": " good"}'
METHODS = {
    "prompt": {},
    "prefix": {"mlp_hidden": 8},
    "p_tuning": {"encoder_hidden_size": 8},
}
SUMMARY_KEYS = ("steps", "stopped_early", "best_value", "best_step", "dev", "best_dev")


def small_data(folder: Path, rows: int = 8) -> Path:
    """The sample sentiment task cut to `rows` examples a split (both labels in each)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        lines = (SENTIMENT / f"{split}.jsonl").read_text().splitlines()
        (folder / f"{split}.jsonl").write_text("\n".join(lines[:rows]) + "\n")
    return folder


def base_config(model: str, data: Path, method: str = "prompt", steps: int = 8) -> dict:
    return {
        "method": method,
        "models": [model],
        "task": {
            "data": str(data),
            "template": "review: {text} sentiment:",
            "verbalizer": json.loads(VERBALIZER),
            "max_examples": 8,
        },
        "prompt": {"length": 4, "init": "random", "seed": 1, **METHODS[method]},
        "train": {
            "steps": steps,
            "batch_size": 4,
            "lr": 0.1,
            "eval_every": 4,
            "checkpoint_every": 2,
            "seed": 7,
        },
    }


# --- train -------------------------------------------------------------------------------


def train(model: str, data: Path, method: str) -> Command:
    def setup(work: Path) -> None:
        (work / "config.yaml").write_text(yaml.safe_dump(base_config(model, data, method)))

    def argv(work: Path, again: bool) -> list:
        if again and (work / "run" / "config.yaml").exists():
            return ["train", "--resume", "run", "--quiet"]
        return ["train", "config.yaml", "--out", "run", "--quiet"]

    def partial(work: Path, ref: Path) -> None:
        check_run_partial(work / "run", ref / "run")

    def final(work: Path, ref: Path) -> None:
        check_run_final(work / "run", ref / "run")

    return Command(f"train {method}", setup, argv, partial, final)


def check_run_partial(run: Path, ref: Path) -> None:
    """A killed run: its metrics so far are the reference's first lines (nothing twice),
    a summary only as the reference's, the config as it was."""
    lines = json_lines(run / "metrics.jsonl")
    assert lines == json_lines(ref / "metrics.jsonl")[: len(lines)], f"{run}: metrics differ"
    if (run / "summary.json").exists():
        same_summary(run, ref)
    if (run / "config.yaml").exists():
        assert (run / "config.yaml").read_bytes() == (ref / "config.yaml").read_bytes()


def check_run_final(run: Path, ref: Path) -> None:
    """A finished re-run equals the uninterrupted one: prompts bitwise, every metrics line,
    the summary's results."""
    for name in ("last.safetensors", "prompt.safetensors"):
        assert same_tensors(run / name, ref / name), f"{run / name} differs"
    assert json_lines(run / "metrics.jsonl") == json_lines(ref / "metrics.jsonl")
    same_summary(run, ref)


def same_summary(run: Path, ref: Path) -> None:
    mine = json.loads((run / "summary.json").read_text())
    theirs = json.loads((ref / "summary.json").read_text())
    assert {k: mine[k] for k in SUMMARY_KEYS} == {k: theirs[k] for k in SUMMARY_KEYS}, run


# --- study -------------------------------------------------------------------------------


def study(model: str, data: Path, seeds: int = 2) -> Command:
    def setup(work: Path) -> None:
        (work / "base.yaml").write_text(yaml.safe_dump(base_config(model, data, steps=4)))
        grid = {
            "config": "base.yaml",
            "model_sets": [[model]],
            "train_seeds": list(range(1, seeds + 1)),
        }
        (work / "study.yaml").write_text(yaml.safe_dump(grid))

    def argv(work: Path, again: bool) -> list:
        return ["study", "study.yaml", "--out", "out", "--quiet"]

    def partial(work: Path, ref: Path) -> None:
        for run in _runs(ref / "out"):
            if (work / "out" / run).is_dir():
                check_run_partial(work / "out" / run, ref / "out" / run)
        if (work / "out" / "study.json").exists():
            same_study(work / "out", ref / "out")

    def final(work: Path, ref: Path) -> None:
        for run in _runs(ref / "out"):
            check_run_final(work / "out" / run, ref / "out" / run)
        same_study(work / "out", ref / "out")

    return Command("study", setup, argv, partial, final)


def _runs(out: Path) -> list[str]:
    return [str(p.parent.relative_to(out)) for p in sorted(out.rglob("summary.json"))]


def same_study(out: Path, ref: Path) -> None:
    """Every planned run once (none lost, none counted twice), each with the reference's
    score; `skipped` (finished before this start) is the only field that may differ."""
    mine, theirs = (
        json.loads((out / "study.json").read_text()),
        json.loads((ref / "study.json").read_text()),
    )
    strip = [{k: v for k, v in row.items() if k != "skipped"} for row in mine["runs"]]
    assert strip == [{k: v for k, v in row.items() if k != "skipped"} for row in theirs["runs"]]
    assert mine["groups"] == theirs["groups"]


# --- one-shot commands: each output absent, as before, or the reference's ------------------


def one_shot(name: str, args: list, outputs: list[str], previous: dict[str, str]) -> Command:
    """A command that writes `outputs` (paths under its folder, files or folders) in one go;
    `previous`: an earlier version of some of them (path: where to copy it from), put there
    first so a kill must leave either version whole."""

    def setup(work: Path) -> None:
        for output, source in previous.items():
            copy(Path(source), work / output)

    def partial(work: Path, ref: Path) -> None:
        for output in outputs:
            if output not in previous and (work / output).is_dir():
                for path in visible_files(work / output):  # written file by file
                    mine = path.relative_to(work)
                    assert path.read_bytes() == (ref / mine).read_bytes(), f"{name}: {mine}"
            elif (work / output).exists():
                old = Path(previous[output]) if output in previous else None
                assert same_tree(work / output, ref / output) or (
                    old is not None and same_tree(work / output, old)
                ), f"{name}: {output} is neither the old nor the new version"

    def final(work: Path, ref: Path) -> None:
        for output in outputs:
            assert same_tree(work / output, ref / output), f"{name}: {output} differs"

    return Command(name, setup, lambda work, again: args, partial, final)


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)


def visible_files(folder: Path) -> list[Path]:
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(x.startswith(".") for x in p.relative_to(folder).parts)
    ]


def same_tree(a: Path, b: Path) -> bool:
    """The same file bytes, or folders with the same visible files of the same bytes."""
    if a.is_file() or b.is_file():
        return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()
    names = sorted(p.name for p in a.iterdir() if not p.name.startswith("."))
    if names != sorted(p.name for p in b.iterdir() if not p.name.startswith(".")):
        return False
    return all(same_tree(a / n, b / n) for n in names)


def one_shots(model: str, data: Path, prompt: Path, other: Path, old: Path) -> list[Command]:
    """predict/generate --input, compress, export, explain on `prompt`; `other` is another
    prompt and `old` a folder of earlier outputs (made from `other`) to be replaced."""
    use = [prompt, "--model", model]
    inputs = ["--input", data / "test.jsonl", "--output", "out.jsonl", "--batch-size", "4"]
    predict = ["predict", *use, "--verbalizer", VERBALIZER, *inputs]
    generate = ["generate", *use, *inputs, "--greedy", "--max-new-tokens", "3"]
    compress = ["compress", *use, "--keep", "2", "--data", data, "--out", "small.safetensors"]
    export = ["export", *use, "--format", "peft", "--out", "adapters/ad", "--force"]
    explain = ["explain", *use, "--data", data, "--out", "report", "--projection", "none"]
    return [
        one_shot("predict --input", predict, ["out.jsonl"], {"out.jsonl": old / "predict.jsonl"}),
        one_shot(
            "generate --input", generate, ["out.jsonl"], {"out.jsonl": old / "generate.jsonl"}
        ),
        one_shot("compress", compress, ["small.safetensors"], {"small.safetensors": other}),
        one_shot("export --format peft", export, ["adapters/ad"], {"adapters/ad": old / "peft"}),
        one_shot("explain", [*explain, "--max-examples", "8"], ["report"], {}),
    ]
