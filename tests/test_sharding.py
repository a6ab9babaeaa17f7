"""`train.shard: fsdp`: frozen weights sharded with FSDP2 over 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from softprompt.config import validate_config
from softprompt.errors import ConfigError
from softprompt.training.distributed import Processes
from softprompt.training.trainer import Trainer
from test_distributed import LAUNCHERS, STEPS, launch, settings

PREFIX = {"length": 3, "init": "random", "seed": 3, "reparameterization": "none"}


def resume(run) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*LAUNCHERS["torchrun"], "-m", "softprompt.cli", "train", "--resume", str(run)]
    return subprocess.run(
        [*command, "--quiet"], capture_output=True, text=True, env=env, timeout=600, check=False
    )


def tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_sharded_two_processes_train_what_one_whole_model_trains(
    method, tiny_dirs, sentiment_dir, tmp_path
):
    raw = settings(tiny_dirs["llama"], sentiment_dir, shard="fsdp")
    if method == "prefix":
        raw |= {"method": "prefix", "prompt": PREFIX}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    done = launch(LAUNCHERS["torchrun"], config_path, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]

    del raw["train"]["shard"]
    Trainer(validate_config(raw), tmp_path / "one", progress=False).run()
    for name in ("last.safetensors", "prompt.safetensors"):
        two, one = tensors(tmp_path / "two" / name), tensors(tmp_path / "one" / name)
        assert two.keys() == one.keys()
        for key in one:
            torch.testing.assert_close(two[key], one[key], atol=2e-5, rtol=1e-4)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2
    shards = summary["sharding"]
    assert shards["local_bytes"] <= 0.55 * shards["model_bytes"]


@pytest.mark.sweep  # four 2-process launches: ~100 s on the 2-core machine
def test_sharded_joint_bf16_checkpointed_run_resumes_exactly(tiny_dirs, sentiment_dir, tmp_path):
    """Two models sharded at once, bf16, gradient checkpointing, dev evaluation, and --resume
    from the step-4 checkpoint giving the uninterrupted run's prompt bit for bit; the prompt is
    the one two processes train on whole models (bf16 sums over 2 processes differ from 1's)."""
    extra = {"shard": "fsdp", "precision": "bf16", "gradient_checkpointing": True}
    raw = settings(tiny_dirs["llama"], sentiment_dir, **extra)
    raw["models"].append(str(tiny_dirs["gemma3"]))
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    done = launch(LAUNCHERS["torchrun"], config_path, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "two"
    whole = tensors(run / "last.safetensors")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["dev"]["models"].keys() == {
        str(tiny_dirs["llama"]),
        str(tiny_dirs["gemma3"]),
    }
    assert summary["sharding"]["local_bytes"] <= 0.55 * summary["sharding"]["model_bytes"]

    (run / "checkpoints" / f"step-{STEPS:08d}.safetensors").unlink()
    resumed = resume(run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["resumed_from"].endswith("04.safetensors")
    assert tensors(run / "last.safetensors")["prompt"].equal(whole["prompt"])

    # the same two processes holding the models whole: sharding moves weights, not results
    raw["train"]["shard"] = "none"
    config_path.write_text(yaml.safe_dump(raw))
    done = launch(LAUNCHERS["torchrun"], config_path, tmp_path / "whole")
    assert done.returncode == 0, done.stderr[-3000:]
    unsharded = tensors(tmp_path / "whole" / "last.safetensors")["prompt"]
    torch.testing.assert_close(whole["prompt"], unsharded, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("world", "train", "message"),
    [
        (1, {"shard": "fsdp"}, r"this run has one; launch with `torchrun"),
        (4, {"shard": "fsdp", "batch_size": 6, "micro_batch_size": 3}, r"batch_size \(6\) a mul"),
        (1, {"shard": "fdsp"}, r"shard"),
    ],
)
def test_shard_settings_that_cannot_work_are_refused(
    tiny, sentiment_dir, tmp_path, monkeypatch, world, train, message
):
    processes = Processes(0, world, torch.device("cpu"))
    monkeypatch.setattr(
        sys.modules["softprompt.training.trainer"], "launched_processes", lambda _: processes
    )
    with pytest.raises(ConfigError, match=message):
        config = validate_config(settings("tiny", sentiment_dir, **train))
        Trainer(config, tmp_path, backbones=[tiny["llama"]], progress=False)
    assert not (tmp_path / "config.yaml").exists()


def test_gradient_checkpointing_recomputes_layers_and_keeps_the_gradient():
    """The layers alone train-flagged (dropout stays off), replayed in backward, same gradient."""
    from softprompt.models.tiny import build_model
    from softprompt.training.sharding import checkpoint_layers

    grads, calls = [], []
    for checkpointing in (False, True):
        model = build_model("llama", 64, seed=1).requires_grad_(False).eval()
        if checkpointing:
            checkpoint_layers(model)
        layer = model.model.layers[0]
        layer.self_attn.register_forward_pre_hook(lambda *_, on=checkpointing: calls.append(on))
        prompt = torch.randn(1, 3, 32, requires_grad=True)
        model(inputs_embeds=prompt).logits.logsumexp(-1).sum().backward()
        grads.append(prompt.grad)
        assert not model.model.layers[0].self_attn.training
    assert calls == [False, True, True]  # recomputed once in backward
    torch.testing.assert_close(grads[0], grads[1])
