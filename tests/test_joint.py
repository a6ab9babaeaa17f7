"""Joint training across several models, transfer evaluation and studies."""

import json

import pytest
import torch
import yaml

from conftest import corpus
from softprompt.config import validate_config
from softprompt.crossmodel.matrix import transfer_matrix, write_matrix
from softprompt.errors import ConfigError
from softprompt.methods.prompt import load_prompt
from softprompt.models import load_backbone
from softprompt.models.tiny import save_tiny
from softprompt.study import load_study, run_study
from softprompt.training.trainer import Trainer


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """Three tiny Llamas with one tokenizer and different seeds, and a bigger one."""
    root = tmp_path_factory.mktemp("family")
    texts = corpus()
    dirs = [save_tiny(root / f"seed-{s}", texts, "llama", seed=s) for s in range(3)]
    wide = save_tiny(root / "wide", texts, "llama", seed=0, hidden=48)
    return {"dirs": [str(d) for d in dirs], "wide": str(wide)}


def joint_config(sentiment_dir, models, **train):
    return validate_config(
        {
            "models": models,
            "task": {
                "data": str(sentiment_dir),
                "template": "review: {text} sentiment:",
                "verbalizer": {"negative": " bad", "positive": " good"},
                "max_examples": 16,
            },
            "prompt": {"length": 4, "init": "random", "seed": 1},
            "train": {"steps": 4, "batch_size": 4, "lr": 0.1, "eval_every": 2, "seed": 3, **train},
        }
    )


def test_identical_copies_train_exactly_like_one_model(sentiment_dir, family, tmp_path):
    one = family["dirs"][0]
    single = Trainer(joint_config(sentiment_dir, [one]), tmp_path / "single", progress=False)
    single.run()
    copies = [load_backbone(one), load_backbone(one)]
    joint = Trainer(
        joint_config(sentiment_dir, [one, one]),
        tmp_path / "joint",
        backbones=copies,
        progress=False,
    )
    joint.run()
    a = load_prompt(tmp_path / "single" / "last.safetensors").embedding
    b = load_prompt(tmp_path / "joint" / "last.safetensors").embedding
    assert torch.equal(a, b)


def _separate(trainer, prompt, indices):
    """Each model's batch loss and gradient, computed on its own."""
    losses, grads = [], []
    for slot in trainer.slots:
        p = prompt.detach().clone().requires_grad_(True)
        items = [slot.train[i] for i in indices]
        batch = slot.task.collate(items)
        loss = slot.task.losses(slot.task.class_scores(p, batch), batch.labels).mean()
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(p.grad)
    return losses, grads


@pytest.mark.parametrize("weights", [None, [3.0, 1.0]])
def test_joint_loss_and_gradient_are_the_weighted_mean(sentiment_dir, family, tmp_path, weights):
    config = joint_config(sentiment_dir, family["dirs"][:2], micro_batch_size=2)
    config.model_weights = weights
    trainer = Trainer(config, tmp_path, progress=False)
    state = trainer.fresh_state()
    indices = trainer.step_indices(0)
    losses = trainer.accumulate_gradients(state.module.embedding, indices)
    expected_losses, grads = _separate(trainer, state.module.embedding, indices)
    w = torch.tensor(weights or [1.0, 1.0])
    w = w / w.sum()
    assert list(losses.values()) == pytest.approx(expected_losses, rel=1e-5)
    torch.testing.assert_close(state.module.embedding.grad, w[0] * grads[0] + w[1] * grads[1])
    assert not torch.allclose(grads[0], grads[1])


def test_backward_runs_model_by_model(sentiment_dir, family, tmp_path):
    trainer = Trainer(joint_config(sentiment_dir, family["dirs"][:2]), tmp_path, progress=False)
    state = trainer.fresh_state()
    events = []
    for m, backbone in enumerate(trainer.backbones):
        backbone.model.base_model.register_forward_hook(lambda *_, m=m: events.append(f"fwd{m}"))
    state.module.embedding.register_hook(lambda grad: events.append("bwd"))
    trainer.accumulate_gradients(state.module.embedding, trainer.step_indices(0))
    # a causal model runs twice per micro-batch (the prompt once, then the texts after it)
    runs = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]
    assert runs == ["fwd0", "bwd", "fwd1", "bwd"]


def test_per_model_metrics_and_best_model(sentiment_dir, family, tmp_path):
    models = family["dirs"][:2]
    config = joint_config(sentiment_dir, models, best_model=models[1], best_metric="loss")
    summary = Trainer(config, tmp_path, progress=False).run()
    assert set(summary["dev"]["models"]) == set(models)
    per_model = [summary["dev"]["models"][m]["loss"] for m in models]
    assert summary["dev"]["mean"]["loss"] == pytest.approx(sum(per_model) / 2)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert set(next(x for x in lines if x["event"] == "train")["model_losses"]) == set(models)
    evals = [x for x in lines if x["event"] == "eval"]
    best = min(evals, key=lambda x: x["dev"]["models"][models[1]]["loss"])
    assert summary["best_step"] == best["step"]
    with pytest.raises(ConfigError, match="best_model"):
        Trainer(joint_config(sentiment_dir, models, best_model="other"), tmp_path, progress=False)


def test_transfer_matrix_shape_and_baselines(sentiment_dir, family, tmp_path):
    dirs = family["dirs"]
    Trainer(joint_config(sentiment_dir, dirs[:2]), tmp_path / "run", progress=False).run()
    prompt = str(tmp_path / "run" / "prompt.safetensors")
    matrix = transfer_matrix([prompt], [*dirs, family["wide"]], str(sentiment_dir), split="dev")
    assert [r["kind"] for r in matrix["rows"]] == ["zero_shot", "prompt", "initial"]
    prompt_row = matrix["rows"][1]
    assert set(prompt_row["trained_on"]) == set(dirs[:2])
    assert "error" in prompt_row["results"][family["wide"]]
    for row in matrix["rows"]:
        assert list(row["results"]) == [*dirs, family["wide"]]
        for model in dirs:
            assert row["results"][model]["examples"] == 100
    # the zero-shot row on the wide model works (no prompt to mismatch)
    assert "accuracy" in matrix["rows"][0]["results"][family["wide"]]
    # the initial row is the untrained prompt: different metrics from the trained one
    assert matrix["rows"][2]["results"][dirs[0]] != prompt_row["results"][dirs[0]]
    json_path, csv_path = write_matrix(matrix, tmp_path / "out")
    assert len(csv_path.read_text().splitlines()) == 1 + 3 * 4
    assert json.loads(json_path.read_text())["models"] == matrix["models"]


def test_study_runs_the_grid_and_resume_skips_finished_runs(
    sentiment_dir, family, tmp_path, monkeypatch
):
    base = tmp_path / "base.yaml"
    config = joint_config(sentiment_dir, family["dirs"][:1], steps=2).model_dump(mode="json")
    base.write_text(yaml.safe_dump(config))
    study_file = tmp_path / "study.yaml"
    study_file.write_text(
        yaml.safe_dump(
            {
                "config": "base.yaml",
                "model_sets": [family["dirs"][:1], family["dirs"][:2]],
                "train_seeds": [1, 2],
                "init_seeds": [0],
            }
        )
    )
    study = load_study(study_file)
    result = run_study(study, tmp_path / "study", progress=False)
    assert len(result["runs"]) == 4 and not any(r["skipped"] for r in result["runs"])
    group = result["groups"][1]
    scores = [r["score"] for r in result["runs"] if r["group"] == group["group"]]
    mean = sum(scores) / 2
    assert group["mean"] == pytest.approx(mean)
    assert group["std"] == pytest.approx((sum((s - mean) ** 2 for s in scores) / 2) ** 0.5)

    calls = []
    import softprompt.study.runs as study_module

    real_train = study_module.train
    monkeypatch.setattr(
        study_module, "train", lambda *a, **k: calls.append(a) or real_train(*a, **k)
    )
    (tmp_path / "study" / "set1-2models" / "train2-init0" / "summary.json").unlink()
    again = run_study(study, tmp_path / "study", progress=False)
    assert len(calls) == 1
    assert [r["skipped"] for r in again["runs"]] == [True, True, True, False]
    assert (tmp_path / "study" / "study.csv").is_file()


def test_peak_activations_stay_at_one_models_worth(sentiment_dir, tmp_path):
    from conftest import corpus
    from profiling import saved_activation_peak

    texts = corpus()
    dirs = [str(save_tiny(tmp_path / f"m{s}", texts, "llama", seed=s)) for s in range(4)]
    peaks = {}
    for count in (1, 4):
        trainer = Trainer(
            joint_config(sentiment_dir, dirs[:count]), tmp_path / f"r{count}", progress=False
        )
        state = trainer.fresh_state()
        with saved_activation_peak() as meter:
            trainer.accumulate_gradients(state.module.embedding, trainer.step_indices(0))
        peaks[count] = meter.peak
        # the naive way (sum every model's loss, one backward) keeps all M graphs alive
        with saved_activation_peak() as naive:
            total = 0
            for slot in trainer.slots:
                batch = slot.task.collate([slot.train[i] for i in trainer.step_indices(0)])
                total = (
                    total
                    + slot.task.losses(
                        slot.task.class_scores(state.module.embedding, batch), batch.labels
                    ).mean()
                )
            total.backward()
        peaks[f"naive{count}"] = naive.peak
    assert peaks[1] > 0
    assert peaks[4] <= 1.1 * peaks[1]
    assert peaks["naive4"] >= 3.5 * peaks["naive1"]


def test_study_resumes_an_interrupted_run_with_changes_only_when_allowed(
    sentiment_dir, family, tmp_path, monkeypatch, capsys
):
    """A run with checkpoints but no summary resumes as `train --resume` does: a base config
    changed since is refused, naming --allow-changes, which `study` takes and records."""
    from test_cli import invoke

    base = tmp_path / "base.yaml"
    config = joint_config(sentiment_dir, family["dirs"][:1], steps=2, checkpoint_every=1)
    base.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    study_file = tmp_path / "study.yaml"
    grid = {"config": "base.yaml", "model_sets": [family["dirs"][:1]], "train_seeds": [1]}
    study_file.write_text(yaml.safe_dump({**grid, "init_seeds": [0]}))
    run_study(load_study(study_file), tmp_path / "study", progress=False)
    run = tmp_path / "study" / "set0-1models" / "train1-init0"
    (run / "summary.json").unlink()  # as if stopped after its last checkpoint
    changed = joint_config(sentiment_dir, family["dirs"][:1], steps=3, checkpoint_every=1)
    base.write_text(yaml.safe_dump(changed.model_dump(mode="json")))
    args = ("study", study_file, "--out", tmp_path / "study", "--quiet", "--json")
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert code == 2 and "train.steps" in err and "--allow-changes" in err, err
    assert not (run / "summary.json").exists()
    code, _, err = invoke(monkeypatch, capsys, *args, "--allow-changes")
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    recorded = [
        json.loads(line) for line in (run / "config-changes.jsonl").read_text().splitlines()
    ]
    assert any("train.steps" in json.dumps(r) for r in recorded), recorded
