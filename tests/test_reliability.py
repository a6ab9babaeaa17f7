"""Crash safety: SIGKILL at a random step then resume gives the same prompt bit for bit;
SIGTERM saves a checkpoint; a non-finite loss keeps the last good prompt."""

import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from softprompt.config import validate_config
from softprompt.errors import SoftpromptError
from softprompt.methods.prompt import load_prompt
from softprompt.training.trainer import Trainer


def config_file(tmp_path, model_dir, sentiment_dir, steps=150):
    config = {
        "models": [str(model_dir)],
        "task": {
            "data": str(sentiment_dir),
            "template": "review: {text} sentiment:",
            "verbalizer": {"negative": " bad", "positive": " good"},
            "max_examples": 40,
        },
        "prompt": {"length": 4, "init": "random", "seed": 2},
        "train": {
            "steps": steps,
            "batch_size": 4,
            "lr": 0.05,
            "eval_every": 10,
            "checkpoint_every": 7,
            "precision": "fp32",
            "seed": 5,
            "device": "cpu",
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_command(config, *args):
    return [
        sys.executable,
        "-m",
        "softprompt.cli",
        "train",
        str(config),
        "--quiet",
        *map(str, args),
    ]


def start_training(config, run_dir, text: bool = False) -> subprocess.Popen:
    """`softprompt train CONFIG --out RUN_DIR` in a child process, its output piped."""
    return subprocess.Popen(
        train_command(config, "--out", str(run_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=text,
    )


def train_steps_done(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"event": "train"' in line for line in path.read_text().splitlines())


def wait_for_step(process, run_dir, step, timeout=120):
    deadline = time.time() + timeout
    while train_steps_done(run_dir) < step:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "training did not reach the step in time"
        time.sleep(0.005)


@pytest.fixture()
def reference(tmp_path, tiny_dirs, sentiment_dir):
    config = config_file(tmp_path, tiny_dirs["llama"], sentiment_dir)
    done = subprocess.run(
        train_command(config, "--out", str(tmp_path / "reference")),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return config, tmp_path / "reference"


def assert_same_result(run_dir, reference_dir):
    for name in ("last.safetensors", "prompt.safetensors"):
        a = load_prompt(run_dir / name).embedding
        b = load_prompt(reference_dir / name).embedding
        assert torch.equal(a, b), name


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(reference, tmp_path):
    config, reference_dir = reference
    kill_at = random.randint(3, 140)
    run_dir = tmp_path / "killed"
    process = start_training(config, run_dir)
    wait_for_step(process, run_dir, kill_at)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    resumed = subprocess.run(
        train_command(config, "--resume", str(run_dir), "--json"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, f"killed at step {kill_at}: {resumed.stderr}"
    assert_same_result(run_dir, reference_dir)
    steps = [
        int(line.split('"step": ')[1].split(",")[0])
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if '"event": "train"' in line
    ]
    assert steps == list(range(1, 151)), f"killed at step {kill_at}"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(reference, tmp_path):
    config, reference_dir = reference
    run_dir = tmp_path / "terminated"
    process = start_training(config, run_dir, text=True)
    wait_for_step(process, run_dir, 20)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "SIGTERM received" in err and "--resume" in err and "Traceback" not in err
    stopped_at = train_steps_done(run_dir)
    newest = sorted((run_dir / "checkpoints").glob("step-*.safetensors"))[-1]
    assert newest.name == f"step-{stopped_at:08d}.safetensors"
    resumed = subprocess.run(
        train_command(config, "--resume", str(run_dir)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert_same_result(run_dir, reference_dir)


def test_non_finite_loss_stops_and_keeps_the_last_good_prompt(tiny, sentiment_dir, tmp_path):
    config = validate_config(
        yaml.safe_load(config_file(tmp_path, "m", sentiment_dir, 10).read_text())
    )
    trainer = Trainer(config, tmp_path / "run", backbones=[tiny["llama"]], progress=False)
    original = trainer._micro_loss
    calls = {"n": 0}

    def poisoned(slot, prompt, micro):
        calls["n"] += 1
        loss = original(slot, prompt, micro)
        return loss * float("nan") if calls["n"] == 4 else loss

    trainer._micro_loss = poisoned
    with pytest.raises(SoftpromptError, match="non-finite"):
        trainer.run()
    last = load_prompt(tmp_path / "run" / "last.safetensors")
    assert torch.isfinite(last.embedding).all()
    assert last.training["step"] == 3


def test_ctrl_c_stops_training_with_its_line_but_no_error_prefix(
    tiny_dirs, sentiment_dir, tmp_path
):
    config = config_file(tmp_path, tiny_dirs["llama"], sentiment_dir, steps=100_000)
    run_dir = tmp_path / "stopped"
    process = start_training(config, run_dir, text=True)
    try:
        wait_for_step(process, run_dir, 3)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("SIGINT received: stopped at step"), err
    assert f"softprompt train --resume {run_dir}" in lines[-1]
    assert "error" not in err.lower() and "Traceback" not in err
