"""SIGKILL each command at seeded random moments (write steps and times over its whole run),
check every file it left, re-run or resume it and check the result equals an uninterrupted
run's. The default suite kills the commands at >= 50 moments in all; the sweep (`make sweep`)
at >= 200. Set SOFTPROMPT_CRASH_REPORT=FILE to get the figures as JSON lines."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from crash.commands import one_shots, small_data, study, train
from crash.harness import ForkServer, kill_chains

FAST = {
    "train prompt": 8,
    "train prefix": 6,
    "train p_tuning": 6,
    "study": 8,
    "predict --input": 5,
    "generate --input": 5,
    "compress": 5,
    "export --format peft": 5,
    "explain": 5,
}
SWEEP_FACTOR = 4


@pytest.fixture(scope="module")
def server():
    fork_server = ForkServer()
    yield fork_server
    fork_server.close()


@pytest.fixture(scope="module")
def commands(server, tiny_dirs, tmp_path_factory) -> dict:
    """Every command under test by name, with the prompts and earlier outputs they use."""
    model = str(tiny_dirs["llama"])
    root = tmp_path_factory.mktemp("crash-inputs")
    data = small_data(root / "data")
    built = {f"train {m}": train(model, data, m) for m in ("prompt", "prefix", "p_tuning")}
    built["study"] = study(model, data)
    prompts = []
    for seed in (1, 2):
        folder = root / f"prompt-{seed}"
        folder.mkdir()
        built["train prompt"].setup(folder)
        argv = ["train", "config.yaml", "--out", "run", "--quiet", "--set", f"train.seed={seed}"]
        assert server.run(argv, folder)["code"] == 0, (folder / "child.log").read_text()
        prompts.append(folder / "run" / "last.safetensors")
    old = root / "old"
    old.mkdir()
    (old / "predict.jsonl").write_text('{"label": "old"}\n')
    (old / "generate.jsonl").write_text('{"text": "old"}\n')
    argv = ["export", prompts[1], "--format", "peft", "--model", model, "--out", old / "peft"]
    assert server.run(argv, old)["code"] == 0, (old / "child.log").read_text()
    for command in one_shots(model, data, prompts[0], prompts[1], old):
        built[command.name] = command
    return built


def report(tally) -> None:
    path = os.environ.get("SOFTPROMPT_CRASH_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(tally.row()) + "\n")


def kill(server, command, root: Path, kills: int, seed: int):
    tally = kill_chains(server, command, root, kills, seed)
    report(tally)
    assert tally.kills >= kills
    assert tally.chains_equal >= 1
    shutil.rmtree(root, ignore_errors=True)
    return tally


@pytest.mark.parametrize("name", list(FAST))
def test_killed_anywhere_nothing_is_torn_and_a_rerun_equals_an_uninterrupted_run(
    name, server, commands, tmp_path
):
    kill(server, commands[name], tmp_path, FAST[name], seed=sorted(FAST).index(name))


@pytest.mark.sweep
@pytest.mark.parametrize("name", list(FAST))
def test_sweep_of_kills(name, server, commands, tmp_path):
    kills = FAST[name] * SWEEP_FACTOR
    kill(server, commands[name], tmp_path, kills, seed=1000 + sorted(FAST).index(name))
