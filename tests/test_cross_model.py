"""Joint training on models of different hidden sizes through embedding maps (issue #9)."""

import itertools
import json

import pytest
import torch

from conftest import corpus
from softprompt.alignment.cache import load_alignment
from softprompt.analysis.explain import explain
from softprompt.config import validate_config
from softprompt.errors import ConfigError, PromptFileError
from softprompt.methods.prompt import SoftPrompt, load_prompt, save_prompt
from softprompt.models import load_backbone
from softprompt.models.tiny import save_tiny
from softprompt.session import evaluate
from softprompt.training.trainer import Trainer

TEMPLATE = "review: {text} sentiment:"
VERBALIZER = {"negative": " bad", "positive": " good"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny Llamas of hidden sizes 32 and 48 sharing a tokenizer, and one of 40."""
    root = tmp_path_factory.mktemp("cross")
    texts = corpus()
    return {
        size: str(save_tiny(root / f"h{size}", texts, "llama", seed=size, hidden=size))
        for size in (32, 48, 40)
    }


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))


def cross_config(sentiment_dir, models, maps="fixed", steps=10, **extra):
    return validate_config(
        {
            "models": models,
            "cross_model": maps,
            "task": {
                "data": str(sentiment_dir),
                "template": TEMPLATE,
                "verbalizer": VERBALIZER,
                "max_examples": 8,
            },
            "prompt": {"length": 4, "init": "random", "seed": 1},
            "train": {
                "steps": steps,
                "batch_size": 8,  # the whole (8-example) training set every step
                "lr": 0.1,
                "eval_every": steps,
                "schedule": "constant",
                "seed": 3,
                **extra,
            },
        }
    )


def model_losses(run_dir, model: str) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["model_losses"][model] for r in map(json.loads, lines) if r["event"] == "train"]


@pytest.mark.parametrize("maps", ["fixed", "learned"])
def test_joint_training_across_hidden_sizes_runs_and_its_loss_falls(
    sentiment_dir, models, tmp_path, maps
):
    pair = [models[32], models[48]]
    Trainer(cross_config(sentiment_dir, pair, maps), tmp_path / "run", progress=False).run()
    for model in pair:  # the same batch every step: each model's loss must go down
        losses = model_losses(tmp_path / "run", model)
        assert losses[-1] < losses[0], losses
        assert sum(b < a for a, b in itertools.pairwise(losses)) >= 0.8 * (len(losses) - 1)
    prompt = load_prompt(tmp_path / "run" / "last.safetensors")
    assert prompt.hidden_size == 32
    assert list(prompt.views) == [models[48]]
    assert prompt.views[models[48]].shape == (4, 48)


def test_fixed_maps_stay_the_fitted_alignment(sentiment_dir, models, tmp_path):
    pair = [models[32], models[48]]
    Trainer(cross_config(sentiment_dir, pair, steps=3), tmp_path / "run", progress=False).run()
    prompt = load_prompt(tmp_path / "run" / "last.safetensors")
    fitted = load_alignment(load_backbone(pair[0]), load_backbone(pair[1]), "procrustes")
    expected = prompt.embedding @ fitted.weight + fitted.bias
    torch.testing.assert_close(prompt.views[models[48]], expected, atol=1e-5, rtol=1e-5)


def test_learned_maps_change_and_have_their_own_learning_rate(sentiment_dir, models, tmp_path):
    pair = [models[32], models[48]]
    config = cross_config(sentiment_dir, pair, "learned", steps=3)
    config.cross_model.lr = 0.01
    trainer = Trainer(config, tmp_path / "run", progress=False)
    state = trainer.fresh_state()
    assert [g["lr"] for g in state.optimizer.param_groups] == [0.1, 0.01]
    start = state.module.maps[1].weight.detach().clone()
    trainer.train_step(state)
    assert not torch.equal(state.module.maps[1].weight, start)
    assert state.module.maps[0].__class__.__name__ == "Identity"


def test_the_saved_view_is_what_the_other_model_is_evaluated_with(sentiment_dir, models, tmp_path):
    pair = [models[32], models[48]]
    Trainer(cross_config(sentiment_dir, pair, steps=2), tmp_path / "run", progress=False).run()
    path = tmp_path / "run" / "last.safetensors"
    prompt = load_prompt(path)
    kwargs = {"split": "dev", "template": TEMPLATE, "verbalizer": VERBALIZER}
    via_file = evaluate(str(path), models[48], str(sentiment_dir), **kwargs)
    view_only = SoftPrompt(embedding=prompt.views[models[48]], models=[{"name": models[48]}])
    direct = evaluate(view_only, models[48], str(sentiment_dir), **kwargs)
    assert via_file["loss"] == pytest.approx(direct["loss"], rel=1e-6)
    with pytest.raises(PromptFileError, match="softprompt transfer"):
        evaluate(str(path), models[40], str(sentiment_dir), **kwargs)


def test_explain_locates_tokens_in_each_models_space(sentiment_dir, models, tmp_path):
    pair = [models[32], models[48]]
    Trainer(cross_config(sentiment_dir, pair, steps=2), tmp_path / "run", progress=False).run()
    report = explain(
        tmp_path / "run" / "last.safetensors",
        pair,
        str(sentiment_dir),
        split="dev",
        template=TEMPLATE,
        verbalizer=VERBALIZER,
        max_examples=6,
    )
    assert [m["name"] for m in report["models"]] == pair
    assert len(report["tokens"]) == 4
    assert all(t["owner"] in pair and t["location_cosine"] in pair for t in report["tokens"])
    assert {row["model"] for row in report["compression"]} <= set(pair)


def test_views_round_trip_and_bad_views_are_refused(tmp_path):
    prompt = SoftPrompt(
        embedding=torch.randn(3, 8),
        models=[{"name": "a"}, {"name": "b"}],
        views={"b": torch.randn(3, 12)},
    )
    save_prompt(prompt, tmp_path / "p.safetensors")
    back = load_prompt(tmp_path / "p.safetensors")
    assert torch.equal(back.views["b"], prompt.views["b"])
    assert torch.equal(back.embedding_for(12, "b"), prompt.views["b"])
    assert torch.equal(back.embedding_for(8, "a"), prompt.embedding)
    from safetensors.torch import save_file

    bad = {"prompt": torch.randn(3, 8), "view.5": torch.randn(3, 12)}
    save_file(bad, tmp_path / "bad.safetensors", metadata={"models": json.dumps([{"name": "a"}])})
    with pytest.raises(PromptFileError, match="names no model"):
        load_prompt(tmp_path / "bad.safetensors")


def test_cross_model_settings_are_validated(sentiment_dir, models):
    with pytest.raises(ConfigError, match="cross_model.maps"):
        cross_config(sentiment_dir, [models[32]], maps="magic")
    with pytest.raises(ConfigError, match="cross_model.lr"):
        cross_config(sentiment_dir, [models[32]], maps={"maps": "learned", "lr": 0})


def test_cli_explain_writes_a_report_for_a_cross_architecture_prompt(
    sentiment_dir, models, tmp_path, monkeypatch, capsys
):
    from test_cli import invoke

    pair = [models[32], models[48]]
    Trainer(cross_config(sentiment_dir, pair, steps=2), tmp_path / "run", progress=False).run()
    args = ["explain", tmp_path / "run" / "last.safetensors", "-m", pair[0], "-m", pair[1]]
    args += ["--data", sentiment_dir, "--split", "dev", "--max-examples", "4"]
    args += ["--projection", "pca", "--out", tmp_path / "report", "--json"]
    code, out, err = invoke(monkeypatch, capsys, *args)
    assert code == 0, err
    assert [m["name"] for m in json.loads(out)["models"]] == pair
    assert (tmp_path / "report" / "report.html").is_file()
