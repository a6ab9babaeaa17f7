"""Data-parallel training under a launcher, and experiment trackers."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from softprompt.config import validate_config
from softprompt.errors import ConfigError
from softprompt.methods.prompt import load_prompt
from softprompt.training.distributed import Processes
from softprompt.training.trainer import Trainer

STEPS = 6


def settings(model_dir, sentiment_dir, **train) -> dict:
    return {
        "models": [str(model_dir)],
        "task": {
            "data": str(sentiment_dir),
            "template": "review: {text} sentiment:",
            "verbalizer": {"negative": " bad", "positive": " good"},
            "max_examples": 40,
        },
        "prompt": {"length": 4, "init": "random", "seed": 3},
        "train": {
            "steps": STEPS,
            "batch_size": 6,
            "micro_batch_size": 3,
            "lr": 0.05,
            "eval_every": 3,
            "checkpoint_every": 2,
            "seed": 11,
            "device": "cpu",
            **train,
        },
    }


def launch(launcher: list[str], config_path, out_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*launcher, "-m", "softprompt.cli", "train", str(config_path), "--quiet"]
    return subprocess.run(
        [*command, "--out", str(out_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


TORCHRUN = ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ACCELERATE = [
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
]  # DDP, also on CPUs
ACCELERATE_QUIET = ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", *TORCHRUN],
    "accelerate": [sys.executable, "-m", *ACCELERATE, *ACCELERATE_QUIET],
}


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_the_same_prompt_as_one(launcher, tiny_dirs, sentiment_dir, tmp_path):
    raw = settings(tiny_dirs["llama"], sentiment_dir)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    done = launch(LAUNCHERS[launcher], config_path, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]

    Trainer(validate_config(raw), tmp_path / "one", progress=False).run()
    for name in ("last.safetensors", "prompt.safetensors"):
        two = load_prompt(tmp_path / "two" / name).embedding
        one = load_prompt(tmp_path / "one" / name).embedding
        torch.testing.assert_close(two, one, atol=2e-5, rtol=1e-4)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    # only the main process wrote: one train record per step, not one per process
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if '"train"' in line]
    assert steps == list(range(1, STEPS + 1))
    losses = [json.loads(line)["loss"] for line in lines if '"train"' in line]
    reference = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    expected = [json.loads(line)["loss"] for line in reference if '"train"' in line]
    assert losses == pytest.approx(expected, rel=1e-4)


def test_each_process_takes_every_worlds_item():
    items = list(range(7))
    shares = [Processes(rank, 3).share(items) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(i for share in shares for i in share) == items


def test_tensorboard_gets_the_same_losses_as_metrics_jsonl(tiny, sentiment_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = validate_config(
        settings("tiny", sentiment_dir, report_to="tensorboard", device="auto")
    )
    Trainer(config, tmp_path, backbones=[tiny["llama"]], progress=False).run()
    events = list((tmp_path / "tracking").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    logged = {e.step: e.value for e in accumulator.Scalars("train/loss")}
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    expected = {r["step"]: r["loss"] for r in map(json.loads, lines) if r["event"] == "train"}
    assert logged.keys() == expected.keys()
    assert list(logged.values()) == pytest.approx(list(expected.values()), rel=1e-6)
    dev_steps = [e.step for e in accumulator.Scalars("dev/mean/accuracy")]
    assert dev_steps == [3, 6]


def test_trackers_are_off_by_default_and_metrics_still_written(tiny, sentiment_dir, tmp_path):
    config = validate_config(settings("tiny", sentiment_dir, steps=2, eval_every=2))
    assert config.train.report_to == []
    Trainer(config, tmp_path, backbones=[tiny["llama"]], progress=False).run()
    assert not (tmp_path / "tracking").exists()
    assert (tmp_path / "metrics.jsonl").read_text().count('"train"') == 2


def test_a_missing_tracker_package_fails_before_anything_is_written(
    tiny, sentiment_dir, tmp_path, monkeypatch
):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    config = validate_config(settings("tiny", sentiment_dir, report_to=["wandb"]))
    with pytest.raises(ConfigError, match=r"wandb is not installed; pip install wandb"):
        Trainer(config, tmp_path / "run", backbones=[tiny["llama"]], progress=False)
    assert not (tmp_path / "run").exists()


def test_unknown_tracker_is_a_config_error(sentiment_dir):
    with pytest.raises(ConfigError, match="report_to"):
        validate_config(settings("tiny", sentiment_dir, report_to=["mlflow"]))


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"batch_size": 2, "micro_batch_size": 2}, r"batch_size \(2\) is smaller than .* \(4\)"),
        ({"devices": ["cpu", "cpu"]}, "remove it"),
    ],
)
def test_launch_settings_that_cannot_work_are_refused(
    tiny, sentiment_dir, tmp_path, monkeypatch, train, message
):
    four = Processes(1, 4, torch.device("cpu"))
    monkeypatch.setattr(
        sys.modules["softprompt.training.trainer"], "launched_processes", lambda _: four
    )
    config = validate_config(settings("tiny", sentiment_dir, **train))
    with pytest.raises(ConfigError, match=message):
        Trainer(config, tmp_path, backbones=[tiny["llama"]], progress=False)
