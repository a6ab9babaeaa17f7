import json
import math

import pytest
import torch

from conftest import interrupt_at, write_jsonl
from softprompt.config import validate_config
from softprompt.methods.prompt import load_prompt
from softprompt.training.schedule import lr_factor
from softprompt.training.trainer import Trainer


def make_config(sentiment_dir, max_examples=24, **train):
    settings = {
        "steps": 12,
        "batch_size": 4,
        "lr": 0.1,
        "eval_every": 6,
        "checkpoint_every": 4,
        "schedule": "cosine",
        "warmup": 0.25,
        "seed": 7,
        **train,
    }
    return validate_config(
        {
            "models": ["tiny"],
            "task": {
                "data": str(sentiment_dir),
                "template": "review: {text} sentiment:",
                "verbalizer": {"negative": " bad", "positive": " good"},
                "max_examples": max_examples,
            },
            "prompt": {"length": 4, "init": "random", "seed": 1},
            "train": settings,
        }
    )


def run(config, tiny, out, **kwargs):
    trainer = Trainer(config, out, backbones=[tiny["llama"]], progress=False)
    return trainer, trainer.run(**kwargs)


def test_schedules_with_fractional_warmup():
    # 10 steps, 2 of warmup: ramps 1/2, 2/2, then decays over the remaining 8
    assert [lr_factor(s, 10, 2, "constant") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(2, 10, 2, "linear") == 1.0
    assert lr_factor(6, 10, 2, "linear") == 0.5
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 10, 2, "cosine") == pytest.approx(0.0)
    assert lr_factor(0, 10, 0, "cosine") == 1.0


def test_the_lr_really_follows_the_warmup(sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, steps=8, warmup=0.25, schedule="linear", eval_every=8)
    _, summary = run(config, tiny, tmp_path)
    lrs = [
        json.loads(line)["lr"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "train"
    ]
    # lr after each step: warmup of round(0.25 * 8) = 2 steps, then linear decay to 0
    expected = [0.1 * lr_factor(s, 8, 2, "linear") for s in range(1, 9)]
    assert lrs == pytest.approx(expected)
    assert summary["steps"] == 8


def test_run_directory_and_summary(sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir)
    _, summary = run(config, tiny, tmp_path)
    for name in (
        "prompt.safetensors",
        "last.safetensors",
        "metrics.jsonl",
        "summary.json",
        "config.yaml",
    ):
        assert (tmp_path / name).is_file(), name
    assert set(summary["dev"]["mean"]) >= {"loss", "accuracy", "macro_f1"}
    assert summary["train_samples_per_second"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["best_step"] == summary["best_step"]
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "eval"] == [6, 12]
    best = load_prompt(tmp_path / "prompt.safetensors")
    assert best.training["step"] == summary["best_step"]
    assert best.task["verbalizer"] == {"negative": " bad", "positive": " good"}
    assert best.models[0]["hidden_size"] == 32


def test_same_seed_same_prompt_and_other_seed_differs(sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, steps=6)
    run(config, tiny, tmp_path / "a")
    run(config, tiny, tmp_path / "b")
    run(make_config(sentiment_dir, steps=6, seed=8), tiny, tmp_path / "c")
    a, b, c = (load_prompt(tmp_path / x / "last.safetensors").embedding for x in "abc")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_micro_batches_accumulate_to_the_configured_batch(sentiment_dir, tiny, tmp_path):
    whole = make_config(
        sentiment_dir, steps=4, batch_size=4, micro_batch_size=4, max_grad_norm=None
    )
    parts = make_config(
        sentiment_dir, steps=4, batch_size=4, micro_batch_size=1, max_grad_norm=None
    )
    run(whole, tiny, tmp_path / "whole")
    run(parts, tiny, tmp_path / "parts")
    a = load_prompt(tmp_path / "whole" / "last.safetensors").embedding
    b = load_prompt(tmp_path / "parts" / "last.safetensors").embedding
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    initial = Trainer(
        whole, tmp_path / "x", backbones=[tiny["llama"]], progress=False
    ).fresh_state()
    assert not torch.allclose(a, initial.module.embedding.detach())


def test_training_lowers_the_loss(sentiment_dir, tiny, tmp_path):
    # every example says "positive": the prompt alone can (and must) move the model there
    rows = [{"text": f"great movie {i}", "label": "positive"} for i in range(8)]
    for split in ("train", "dev"):
        write_jsonl(tmp_path / "data" / f"{split}.jsonl", rows)
    config = make_config(tmp_path / "data", steps=20, batch_size=8, lr=0.3, eval_every=20, warmup=0)
    _, summary = run(config, tiny, tmp_path / "run")
    events = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < 0.9 * losses[0]  # a random tiny model lets a prompt move it only so far
    assert summary["dev"]["mean"]["accuracy"] == 1.0


def test_resume_after_interruption_matches_an_uninterrupted_run(sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, steps=10, checkpoint_every=4, eval_every=5)
    run(config, tiny, tmp_path / "straight")

    trainer = Trainer(config, tmp_path / "broken", backbones=[tiny["llama"]], progress=False)
    interrupt_at(trainer, 6)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    _, summary = run(config, tiny, tmp_path / "broken", resume=True)
    assert summary["resumed_from"].endswith("step-00000004.safetensors")
    a = load_prompt(tmp_path / "straight" / "last.safetensors").embedding
    b = load_prompt(tmp_path / "broken" / "last.safetensors").embedding
    assert torch.equal(a, b)


def test_corrupt_checkpoint_falls_back_to_the_previous_one(sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, steps=8, checkpoint_every=4, eval_every=8)
    run(config, tiny, tmp_path)
    newest = sorted((tmp_path / "checkpoints").glob("step-*.safetensors"))[-1]
    newest.write_bytes(b"garbage")
    trainer = Trainer(config, tmp_path, backbones=[tiny["llama"]], progress=False)
    state = trainer.fresh_state()
    restored = trainer.load_checkpoint(state)
    assert restored is not None and restored != newest
    assert state.step == 4
    assert math.isfinite(float(state.module.embedding.detach().sum()))


def test_a_new_run_refuses_to_overwrite_an_existing_one(sentiment_dir, tiny, tmp_path):
    from softprompt.errors import UsageError

    config = make_config(sentiment_dir, steps=4)
    run(config, tiny, tmp_path)
    before = (tmp_path / "last.safetensors").read_bytes()
    with pytest.raises(UsageError, match="already holds a training run; continue it with --resume"):
        run(config, tiny, tmp_path)
    assert (tmp_path / "last.safetensors").read_bytes() == before


def test_length_bucketing_covers_each_example_once_per_window_and_cuts_padding():
    from softprompt.training.schedule import batch_indices as _batch_indices

    lengths = [(i * 37) % 50 + 1 for i in range(64)]
    batches = [_batch_indices(s, 8, 64, 3, lengths, window=8) for s in range(8)]
    assert sorted(i for b in batches for i in b) == list(range(64))  # one epoch, no repeats
    assert batches == [_batch_indices(s, 8, 64, 3, lengths, window=8) for s in range(8)]
    plain = [_batch_indices(s, 8, 64, 3) for s in range(8)]

    def padding(groups):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in groups)

    assert padding(batches) < 0.5 * padding(plain)


def test_python_evaluate_and_predict_default_to_the_prompts_own_model(
    sentiment_dir, tiny, tiny_dirs, tmp_path
):
    from softprompt.session import evaluate, predict

    run(make_config(sentiment_dir, steps=2), tiny, tmp_path)
    prompt = tmp_path / "prompt.safetensors"
    trained_on = load_prompt(prompt).models[0]["name"]
    assert trained_on == tiny["llama"].name  # the tiny model, not the default smollm2-135m
    result = evaluate(prompt, data=str(sentiment_dir), split="dev")
    assert result["model"] == trained_on and result["trained_on_model"] is True
    assert result["examples"] == 100
    rows = predict(prompt, ["great movie"])
    assert set(rows[0]["probabilities"]) == {"negative", "positive"}


def test_resume_with_a_changed_config_is_refused_and_leaves_the_run_alone(
    sentiment_dir, tiny, tmp_path
):
    from softprompt.errors import UsageError

    run(make_config(sentiment_dir, steps=4), tiny, tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in ("config.yaml", "metrics.jsonl")}
    changed = make_config(sentiment_dir, steps=6, lr=0.2)
    message = (
        f"{tmp_path}: train.steps is 6 here but 4 in the run (also train.lr); resume without "
        "changes, or pass --allow-changes to record them"
    )
    with pytest.raises(UsageError) as raised:
        run(changed, tiny, tmp_path, resume=True)
    assert str(raised.value) == message
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    assert not (tmp_path / "config-changes.jsonl").exists()
    _, summary = run(make_config(sentiment_dir, steps=4), tiny, tmp_path, resume=True)
    assert summary["steps"] == 4  # the unchanged config resumes


def test_allowed_changes_are_used_and_recorded_with_their_step(sentiment_dir, tiny, tmp_path):
    import yaml

    run(make_config(sentiment_dir, steps=4), tiny, tmp_path)
    _, summary = run(
        make_config(sentiment_dir, steps=6), tiny, tmp_path, resume=True, allow_changes=True
    )
    assert summary["steps"] == 6
    records = [json.loads(x) for x in (tmp_path / "config-changes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["changes"]) for r in records] == [
        (4, {"train.steps": {"run": 4, "now": 6}})
    ]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["steps"] == 6
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s > 4] == [5, 6, 6]  # steps 5, 6 and the eval at 6


def test_resume_of_a_missing_folder_or_one_without_its_config_is_an_error(
    sentiment_dir, tiny, tmp_path
):
    from softprompt.errors import UsageError

    config = make_config(sentiment_dir, steps=2)
    with pytest.raises(UsageError, match=f"cannot resume {tmp_path / 'nope'}: no such folder"):
        run(config, tiny, tmp_path / "nope", resume=True)
    assert not (tmp_path / "nope").exists()  # no fresh run started there
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="it has no config.yaml, so it is not a training run"):
        run(config, tiny, tmp_path / "empty", resume=True)
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize(
    ("precision", "native", "expected"),
    [
        ("auto", False, "fp32"),
        ("auto", True, "bf16"),
        ("fp32", True, "fp32"),
        ("bf16", False, "bf16"),
    ],
)
def test_precision_auto_picks_bf16_only_where_it_is_native(
    sentiment_dir, tiny_dirs, tmp_path, monkeypatch, precision, native, expected
):
    # a CPU without native bf16 emulates it many times slower than fp32 (BENCHMARKS.md): auto
    # must not pick it there; an explicit setting is always kept
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    config = make_config(sentiment_dir, precision=precision, device="cpu", steps=1, eval_every=1)
    config.models = [str(tiny_dirs["llama"])]
    trainer = Trainer(config, tmp_path, progress=False)
    assert trainer.backbones[0].dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[expected]
    assert trainer.run()["precision"] == expected
