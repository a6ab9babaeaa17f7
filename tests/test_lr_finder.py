"""`train.lr: auto` (issue #39): the learning-rate range test, the rate it picks, and how a run
records it and resumes with it; learning rates per parameter group."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from conftest import interrupt_at
from softprompt.config import load_config, validate_config
from softprompt.errors import ConfigError
from softprompt.files import read_safetensors
from softprompt.training import lr_finder
from softprompt.training.lr_finder import exponential_rates, range_test, read_curve
from softprompt.training.state import parameter_groups
from softprompt.training.trainer import Trainer
from test_cli import invoke

CHOSEN = 10**-3.75  # the hand-made curve's pick under lr_finder.RULE (steepest): see below
METHODS = {
    "prompt": {"length": 4, "init": "random", "seed": 1},
    "p_tuning": {"length": 4, "init": "random", "seed": 1, "encoder_hidden_size": 8},
    "residual": {"length": 4, "init": "random", "seed": 1, "bottleneck": 8},
    "prefix": {"length": 4, "seed": 1},
}


def hand_made(rates: list[float], loss_of_rate) -> tuple[list[float], list[float]]:
    """A range test whose step's loss is a known function of the rate it is set to."""
    current = {}
    return range_test(
        lambda: loss_of_rate(current["rate"]), lambda rate: current.update(rate=rate), rates
    )


def test_the_rate_is_read_off_a_hand_made_curve_whose_minimum_is_known():
    rates = exponential_rates(1e-4, 1.0, 41)  # 10 per decade: 1e-2 is on the grid
    done, losses = hand_made(rates, lambda r: 1 + (math.log10(r) + 2) ** 2)  # lowest at 1e-2
    curve = read_curve(done, losses)
    assert len(done) == 41
    # A centred 5-point average of a parabola in log10(rate) is the same parabola raised by the
    # mean squared offset (0.02): its lowest point stays at 1e-2. It falls fastest where the
    # whole windows begin, between the 3rd and 4th rates: 10 ** -3.75.
    assert curve.lowest == pytest.approx(1e-2)
    assert curve.steepest == pytest.approx(10**-3.75)
    expected = {"lowest/10": 1e-3, "lowest/3": 1e-2 / 3, "lowest": 1e-2, "steepest": 10**-3.75}
    assert curve.picks == pytest.approx(expected)
    assert curve.chosen == pytest.approx(CHOSEN)  # the rule lr auto uses
    assert "lowest" in curve.shape() and "\n" not in curve.shape()


def test_the_test_stops_where_the_loss_diverges_or_is_not_finite():
    rates = exponential_rates(1e-4, 1.0, 41)
    done, _ = hand_made(rates, lambda r: 1.0 if r < 0.05 else 1e3)
    assert max(done) < 0.1  # stopped within a few steps of 0.05, not at 1.0
    done, losses = hand_made(rates, lambda r: 1.0 - r if r < 0.02 else float("nan"))
    assert max(done) < 0.02 and all(math.isfinite(x) for x in losses)


def test_a_curve_that_never_falls_says_so_and_what_to_try():
    rates = exponential_rates(1e-4, 1.0, 30)
    done, losses = hand_made(rates, lambda r: 1 + r)
    with pytest.raises(ConfigError) as caught:
        read_curve(done, losses)
    message = str(caught.value)
    assert "never fell" in message and "give train.lr a number" in message
    assert "\n" not in message


def make_config(sentiment_dir, method: str, models=("tiny",), **train):
    return validate_config(
        {
            "method": method,
            "models": list(models),
            "task": {
                "data": str(sentiment_dir),
                "template": "review: {text} sentiment:",
                "verbalizer": {"negative": " bad", "positive": " good"},
                "max_examples": 16,
            },
            "prompt": METHODS[method],
            "train": {
                "steps": 24,
                "batch_size": 4,
                "lr": "auto",
                "lr_search_steps": 12,
                "eval_every": 24,
                "checkpoint_every": 8,
                "max_eval_examples": 4,
                "seed": 7,
                **train,
            },
        }
    )


def bowl_loss(slot, steering, micro):
    """A hand-made loss with a falling then rising range-test curve: the squared distance of the
    steering's tensor from 1 (Adam moves each entry by about the rate per step)."""
    tensor = getattr(steering, "embedding", None)
    tensor = steering.keys if tensor is None else tensor
    return len(micro) * ((tensor.float() - 1.0) ** 2).mean()


def trainer_for(config, backbones, folder) -> Trainer:
    trainer = Trainer(config, folder, backbones=backbones, progress=False)
    trainer._micro_loss = bowl_loss
    return trainer


def tensors(path):
    return read_safetensors(path)[0]


@pytest.mark.parametrize("method", list(METHODS))
def test_an_auto_run_is_the_run_given_its_found_rate(method, sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, method)
    summary = trainer_for(config, [tiny["llama"]], tmp_path / "auto").run()
    found = summary["lr"]
    assert 1e-4 <= found <= 3.0 and summary["lr_search"]["chosen"] == found  # within the range
    run = tmp_path / "auto"
    recorded = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert recorded["lr"] == "auto" and recorded["lr_found"] == found
    rows = (run / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "step,lr,loss,smoothed_loss" and 3 <= len(rows) - 1 <= 12
    assert (run / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(run.glob(".*.tmp"))
    given = make_config(sentiment_dir, method, lr=found)
    trainer_for(given, [tiny["llama"]], tmp_path / "given").run()
    auto, fixed = tensors(run / "last.safetensors"), tensors(tmp_path / "given/last.safetensors")
    assert all(torch.equal(auto[k], fixed[k]) for k in fixed)  # the search left nothing behind


def test_resume_reads_the_recorded_rate_and_does_not_search_again(
    sentiment_dir, tiny, tmp_path, monkeypatch
):
    config = make_config(sentiment_dir, "p_tuning")
    trainer_for(config, [tiny["llama"]], tmp_path / "whole").run()
    stopped = trainer_for(config, [tiny["llama"]], tmp_path / "run")
    interrupt_at(stopped, 20)
    with pytest.raises(KeyboardInterrupt):
        stopped.run()

    def no_search(trainer):
        raise AssertionError("searched again on resume")

    monkeypatch.setattr(lr_finder, "find_lr", no_search)
    resumed = trainer_for(config, [tiny["llama"]], tmp_path / "run").run(resume=True)
    assert resumed["resumed_from"] and resumed["lr_search"] is None
    whole, again = (
        tensors(tmp_path / "whole/last.safetensors"),
        tensors(tmp_path / "run/last.safetensors"),
    )
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    assert not (tmp_path / "run" / "config-changes.jsonl").exists()


def test_the_range_test_trains_on_the_first_batches_in_turn(sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, "prompt")
    trainer = trainer_for(config, [tiny["llama"]], tmp_path / "cycle")
    steps, original = [], trainer.step_indices
    trainer.step_indices = lambda step: steps.append(step) or original(step)
    rates, _ = lr_finder.run_range_test(trainer)
    assert steps == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1][: len(rates)] and len(rates) >= 6
    steps.clear()
    lr_finder.run_range_test(trainer, cycle=None)  # a new batch each step, as the run takes
    assert steps[:7] == [0, 1, 2, 3, 4, 5, 6]


def test_a_joint_run_searches_once_for_all_its_models(sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, "prompt", models=("a", "b"))
    calls = []
    original = lr_finder.find_lr

    def counted(trainer):
        calls.append(1)
        return original(trainer)

    lr_finder.find_lr, restore = counted, original
    try:
        trainer = trainer_for(config, [tiny["llama"], tiny["llama"]], tmp_path / "joint")
        summary = trainer.run()
    finally:
        lr_finder.find_lr = restore
    assert calls == [1] and summary["lr"] == summary["lr_search"]["chosen"]
    assert summary["models"] == [tiny["llama"].name] * 2


def test_each_kind_of_parameter_trains_at_its_own_rate(sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, "p_tuning", lr=0.02)
    config.prompt.encoder_lr_scale = 0.25
    trainer = Trainer(config, tmp_path / "groups", backbones=[tiny["llama"]], progress=False)
    state = trainer.fresh_state()
    rates = {g["name"]: g["lr"] for g in state.optimizer.param_groups}
    assert rates == {"prompt": 0.02, "encoder": pytest.approx(0.005)}
    counts = {g["name"]: len(g["params"]) for g in state.optimizer.param_groups}
    assert counts["prompt"] == 1 and counts["encoder"] == len(
        list(state.module.encoder.parameters())
    )
    plain = parameter_groups(torch.nn.Linear(2, 2), 0.1, 1e-4)
    assert [g["name"] for g in plain] == ["prompt"]


def test_lr_auto_with_a_run_shorter_than_the_search_is_one_line(monkeypatch, capsys, tmp_path):
    raw = {"task": {"data": "x", "verbalizer": {"a": " a", "b": " b"}}}
    with pytest.raises(ConfigError, match="lr auto searches 20 steps"):
        load_config(raw, ["train.lr=auto", "train.steps=1"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**raw, "train": {"steps": 1}}))
    code, _, err = invoke(monkeypatch, capsys, "train", path, "--lr", "auto")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "lr auto searches 20 steps" in lines[0]
    assert "give lr a number" in lines[0]


def test_a_run_whose_curve_never_falls_stops_before_it_trains(sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, "prompt")
    trainer = Trainer(config, tmp_path / "flat", backbones=[tiny["llama"]], progress=False)
    trainer._micro_loss = lambda slot, steering, micro: (
        len(micro) * (1.0 + 0.0 * steering.embedding.sum())
    )  # a loss no rate moves
    with pytest.raises(ConfigError, match="never fell"):
        trainer.run()
    assert not (tmp_path / "flat" / "checkpoints").exists()
    assert not (tmp_path / "flat" / "summary.json").exists()


def test_a_curve_that_diverges_at_once_is_one_line():
    with pytest.raises(ConfigError, match="diverged within 2 steps") as caught:
        read_curve([0.1, 0.5], [1.0, 50.0])
    assert "\n" not in str(caught.value)


def test_a_rate_that_is_neither_a_number_nor_auto_is_one_line():
    raw = {"task": {"data": "x", "verbalizer": {"a": " a", "b": " b"}}}
    with pytest.raises(ConfigError, match=r"^--set train.lr=fast: train.lr: give a number"):
        load_config(raw, ["train.lr=fast"])
    assert load_config(raw, ["train.lr=AUTO"]).train.lr == "auto"
    assert load_config(raw, ["train.lr=1e-3"]).train.lr == 0.001


def test_each_run_of_a_study_grid_finds_its_own_rate(
    sentiment_dir, tiny_dirs, tmp_path, monkeypatch
):
    from softprompt.study import load_study, run_study

    monkeypatch.setattr(Trainer, "_micro_loss", lambda self, *args: bowl_loss(*args))
    model = str(tiny_dirs["llama"])
    config = make_config(sentiment_dir, "prompt", models=(model,)).model_dump(mode="json")
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    grid = {"config": "base.yaml", "model_sets": [[model]], "train_seeds": [1, 2]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({**grid, "init_seeds": [0]}))
    run_study(load_study(tmp_path / "study.yaml"), tmp_path / "study", progress=False)
    runs = sorted((tmp_path / "study").glob("*/*/config.yaml"))
    assert len(runs) == 2
    for path in runs:
        recorded = yaml.safe_load(path.read_text())["train"]
        assert recorded["lr"] == "auto" and recorded["lr_found"] > 0
        assert (path.parent / "lr_find.csv").is_file()


def test_a_checkpoint_with_other_parameter_groups_says_how_to_resume(sentiment_dir, tiny, tmp_path):
    from softprompt.errors import UsageError

    one_group = make_config(sentiment_dir, "p_tuning", lr=0.01, steps=8, checkpoint_every=4)
    one_group.prompt.encoder_lr_scale = 1.0  # as runs were before the encoder had its own rate
    trainer_for(one_group, [tiny["llama"]], tmp_path / "run").run()
    two_groups = make_config(sentiment_dir, "p_tuning", lr=0.01, steps=8, checkpoint_every=4)
    two_groups.prompt.encoder_lr_scale = 0.5
    again = trainer_for(two_groups, [tiny["llama"]], tmp_path / "run")
    with pytest.raises(UsageError, match="keeps 1 optimizer parameter group") as caught:
        again.run(resume=True, allow_changes=True)
    assert "--set prompt.encoder_lr_scale=1 --allow-changes" in str(caught.value)
