"""`softprompt plan`: the memory model's terms against what the models actually hold."""

import json

import pytest
import yaml

from softprompt.models.tiny import build_model
from softprompt.training.plan import Run, Shape, plan_memory
from test_cli import invoke
from test_distributed import settings


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_shape_counts_the_parameters_the_model_has(family):
    if family == "qwen2":  # biased q/k/v projections
        import transformers as tf

        model = tf.Qwen2ForCausalLM(
            tf.Qwen2Config(
                vocab_size=300,
                hidden_size=64,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
            )
        )
    else:
        model = build_model(family, 300, seed=0)
    shape = Shape.of(model.config)
    assert shape.parameters == sum(p.numel() for p in model.parameters())


def test_sharding_divides_the_weights_and_checkpointing_cuts_the_activations():
    shape = Shape.of(build_model("llama", 300).config)
    base = Run(micro_batch=8, text_length=64, prompt_length=16)
    whole = plan_memory(shape, base)
    sharded = plan_memory(shape, Run(**{**base.__dict__, "world": 2, "shard": True}))
    checkpointed = plan_memory(shape, Run(**{**base.__dict__, "checkpointing": True}))
    assert sharded["weights"] == whole["weights"] // 2 and sharded["gathered"] > 0
    assert whole["gathered"] == 0
    assert checkpointed["activations"] < whole["activations"]
    assert whole["trainable"] == 16 * 16 * shape.hidden  # value, grad, two AdamW moments
    assert whole["peak"] == sum(v for k, v in whole.items() if k != "peak")


def test_plan_command_says_whether_it_fits(
    tiny, tiny_dirs, sentiment_dir, tmp_path, monkeypatch, capsys
):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings(tiny_dirs["llama"], sentiment_dir, shard="fsdp")))
    code, stdout, _ = invoke(monkeypatch, capsys, "plan", path, "--world", "2", "--json")
    assert code == 0
    result = json.loads(stdout)
    model = tiny["llama"].model  # float32, sharded over 2: half its bytes each
    assert result["run"]["world"] == 2 and result["fits"] is None
    whole = sum(4 * p.numel() for p in model.parameters())
    assert result["models"][str(tiny_dirs["llama"])]["weights"] == whole // 2
    code, stdout, _ = invoke(monkeypatch, capsys, "plan", path)
    assert code == 0 and "peak per process (1 process(es))" in stdout and "fit" not in stdout
    for memory, verdict in (("1", "fits 1 GiB"), ("0.0001", "does NOT fit")):
        code, stdout, _ = invoke(monkeypatch, capsys, "plan", path, "--device-memory", memory)
        assert code == 0 and verdict in stdout
