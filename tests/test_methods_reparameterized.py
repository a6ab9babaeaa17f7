"""P-tuning and residual prompt tuning (issue #26): registered methods that train a prompt
through an encoder, through the unchanged trainer, and save the plain prompt it outputs."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, PromptEncoderConfig, TaskType, get_peft_model

from conftest import interrupt_at
from softprompt.config import validate_config
from softprompt.errors import ConfigError
from softprompt.interop.peft import export_peft, import_peft
from softprompt.methods import load_artifact
from softprompt.methods.p_tuning import PromptEncoder
from softprompt.methods.prompt import SoftPrompt, load_prompt
from softprompt.models import load_backbone
from softprompt.session import Session
from softprompt.training.trainer import Trainer
from test_peft_interop import TEXTS, assert_same_logits

SETTINGS = {
    "p_tuning-mlp": ("p_tuning", {"encoder": "mlp", "encoder_hidden_size": 16}),
    "p_tuning-lstm": ("p_tuning", {"encoder": "lstm", "encoder_hidden_size": 8}),
    "residual": ("residual", {"bottleneck": 8, "dropout": 0.1}),
    "residual-no-norm": ("residual", {"bottleneck": 8, "layer_norm": False}),
}


def make_config(sentiment_dir, name: str, models=("tiny",), **train):
    method, settings = SETTINGS[name]
    return validate_config(
        {
            "method": method,
            "models": list(models),
            "task": {
                "data": str(sentiment_dir),
                "template": "review: {text} sentiment:",
                "verbalizer": {"negative": " bad", "positive": " good"},
                "max_examples": 24,
            },
            "prompt": {"length": 4, "init": "random", "seed": 1, **settings},
            "train": {
                "steps": 10,
                "batch_size": 4,
                "lr": 0.05,
                "eval_every": 5,
                "checkpoint_every": 4,
                "seed": 7,
                **train,
            },
        }
    )


def run(config, backbones, folder, **options):
    trainer = Trainer(config, folder, backbones=backbones, progress=False)
    return trainer, trainer.run(**options)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_trains_and_saves_the_plain_prompt_its_encoder_outputs(name, sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, name)
    trainer = Trainer(config, tmp_path / "run", backbones=[tiny["llama"]], progress=False)
    state = trainer.fresh_state()
    encoder_before = [p.detach().clone() for p in state.module.encoder.parameters()]
    trainer.train_step(state)
    trainer.train_step(state)
    moved = [
        not torch.equal(a, b) for a, b in zip(encoder_before, state.module.encoder.parameters())
    ]
    assert any(moved)  # the encoder trains, not only its inputs
    trainer.run()
    artifact = load_artifact(tmp_path / "run" / "last.safetensors")
    assert isinstance(artifact, SoftPrompt) and artifact.method == "prompt"
    assert artifact.init["method"] == SETTINGS[name][0]
    assert all(artifact.init[key] == value for key, value in SETTINGS[name][1].items())
    # what is saved is the encoder's output (dropout off), not its learned inputs
    saved = trainer.artifact(state).embedding
    state.module.eval()
    with torch.no_grad():
        expected = state.module.prompt()
    assert state.module.training is False
    assert not torch.equal(expected, state.module.embedding.detach())
    assert torch.equal(saved, expected)


@pytest.mark.parametrize("name", ["p_tuning-lstm", "residual"])
def test_resume_is_bitwise_identical(name, sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, name)
    run(config, [tiny["llama"]], tmp_path / "straight")
    trainer = Trainer(config, tmp_path / "broken", backbones=[tiny["llama"]], progress=False)
    interrupt_at(trainer, 6)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    _, summary = run(config, [tiny["llama"]], tmp_path / "broken", resume=True)
    assert summary["resumed_from"].endswith("step-00000004.safetensors")
    a = load_prompt(tmp_path / "straight" / "last.safetensors").embedding
    b = load_prompt(tmp_path / "broken" / "last.safetensors").embedding
    assert torch.equal(a, b)


def test_the_artifact_is_used_as_any_prompt(sentiment_dir, tiny, tiny_dirs, tmp_path):
    config = make_config(sentiment_dir, "residual", models=[str(tiny_dirs["llama"])])
    run(config, [tiny["llama"]], tmp_path / "run")
    session = Session(tmp_path / "run" / "prompt.safetensors", tiny["llama"])
    metrics = session.evaluate(str(sentiment_dir), split="test")
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert [row["label"] for row in session.predict(["great", "awful"])] != []


def test_joint_training_shares_one_encoder(sentiment_dir, tiny, tmp_path):
    config = make_config(sentiment_dir, "p_tuning-mlp", models=("a", "b"))
    trainer = Trainer(
        config, tmp_path / "run", backbones=[tiny["llama"], tiny["gpt2"]], progress=False
    )
    state = trainer.fresh_state()
    assert len([m for m in state.module.modules() if isinstance(m, PromptEncoder)]) == 1
    prompts = [state.module.steering(i).embedding for i in range(2)]
    assert torch.equal(prompts[0], prompts[1])  # same widths: one encoder, one prompt
    trainer.run()
    artifact = load_artifact(tmp_path / "run" / "prompt.safetensors")
    assert [m["name"] for m in artifact.models] == [tiny["llama"].name, tiny["gpt2"].name]


def test_p_tuning_exports_as_peft_p_tuning_and_imports_back(
    sentiment_dir, tiny, tiny_dirs, tmp_path
):
    backbone = tiny["llama"]
    config = make_config(sentiment_dir, "p_tuning-lstm", models=[str(tiny_dirs["llama"])])
    run(config, [backbone], tmp_path / "run")
    adapter = export_peft(tmp_path / "run" / "prompt.safetensors", backbone, tmp_path / "adapter")
    peft_config = json.loads((adapter / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "P_TUNING"
    assert peft_config["encoder_reparameterization_type"] == "LSTM"
    assert peft_config["encoder_hidden_size"] == 8
    artifact = load_artifact(tmp_path / "run" / "prompt.safetensors")
    peft_model = PeftModel.from_pretrained(load_backbone(str(tiny_dirs["llama"])).model, adapter)
    assert_same_logits(backbone, artifact, peft_model, TEXTS)
    back = import_peft(adapter, tmp_path / "back.safetensors", [backbone])
    assert torch.equal(back.embedding, artifact.embedding)


def test_a_peft_made_p_tuning_adapter_imports_as_a_plain_prompt(tiny, tiny_dirs, tmp_path):
    torch.manual_seed(0)
    made = get_peft_model(
        load_backbone(str(tiny_dirs["llama"])).model,
        PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3, encoder_hidden_size=16
        ),
    )
    with torch.no_grad():  # PEFT's encoder starts near zero: scale it so the prompt matters
        made.prompt_encoder["default"].mlp_head[-1].weight.mul_(30)
    made.save_pretrained(tmp_path / "adapter")
    imported = import_peft(tmp_path / "adapter", tmp_path / "p.safetensors", [tiny["llama"]])
    assert imported.method == "prompt" and imported.length == 3
    assert imported.init["peft_type"] == "P_TUNING"
    loaded = PeftModel.from_pretrained(
        load_backbone(str(tiny_dirs["llama"])).model, tmp_path / "adapter"
    )
    assert_same_logits(tiny["llama"], load_artifact(tmp_path / "p.safetensors"), loaded, TEXTS)


def test_settings_are_checked_with_the_known_keys(sentiment_dir):
    with pytest.raises(ConfigError, match="unknown key 'prompt.bottlenek'"):
        validate_config(
            {"method": "residual", "task": {"data": "x", "type": "lm"}, "prompt": {"bottlenek": 8}}
        )
    with pytest.raises(ConfigError, match="prompt.encoder"):
        validate_config(
            {
                "method": "p_tuning",
                "task": {"data": "x", "type": "lm"},
                "prompt": {"encoder": "gru"},
            }
        )
