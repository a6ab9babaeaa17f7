"""Integration tests on the bundled real models (installed and cached by `make setup`)."""

import pytest
import torch

from softprompt.config import load_config
from softprompt.evaluation import evaluate_task
from softprompt.models import load_backbone
from softprompt.training.trainer import Trainer

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("alias", "hidden", "model_type"),
    [("smollm2-135m", 576, "llama"), ("gemma3-270m", 640, "gemma3_text")],
)
def test_bundled_models_load_and_head_matches(alias, hidden, model_type):
    backbone = load_backbone(alias)
    assert backbone.kind == "causal"
    assert backbone.hidden_size == hidden
    assert backbone.model.config.model_type == model_type
    assert not hasattr(backbone.model.config, "quantization_config")
    enc = backbone.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        full = backbone.model(**enc).logits[0, -1]
        hidden_states = backbone.body(backbone.embed(enc.input_ids), enc.attention_mask)
        mine = backbone.head_logits(hidden_states[0, -1])
    torch.testing.assert_close(mine, full.float(), atol=1e-4, rtol=1e-4)
    top5 = [backbone.tokenizer.decode([int(i)]).strip() for i in full.topk(5).indices]
    assert "Paris" in top5


def test_short_training_on_smollm2_beats_zero_shot_on_dev(tmp_path):
    from conftest import ROOT

    config = load_config(
        ROOT / "examples" / "configs" / "sentiment.yaml",
        [
            f"task.data={ROOT / 'examples/data/sentiment'}",
            "train.steps=30",
            "train.eval_every=15",
            "train.warmup=0.1",
            # fp32 on every machine (the config's auto picks bf16 where it is native); what this
            # test checks does not depend on the precision
            "train.precision=fp32",
        ],
    )
    trainer = Trainer(config, tmp_path, progress=False)
    slot = trainer.slots[0]
    zero_shot = evaluate_task(slot.task, None, slot.dev)
    summary = trainer.run()
    assert summary["best_dev"]["accuracy"] > zero_shot["accuracy"]
    assert summary["best_dev"]["loss"] < zero_shot["loss"]


@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_cached_fast_tokenizer_encodes_like_autotokenizer(alias):
    from transformers import AutoTokenizer

    from softprompt.models import ensure_bundled

    backbone = load_backbone(alias)
    reference = AutoTokenizer.from_pretrained(ensure_bundled(alias))
    texts = ["Review: great movie\nSentiment:", " positive", "日本語のテキスト。 😃", "a  b\tc"]
    for text in texts:
        for special in (True, False):
            assert (
                backbone.tokenizer(text, add_special_tokens=special).input_ids
                == reference(text, add_special_tokens=special).input_ids
            )
    assert backbone.tokenizer.pad_token_id == reference.pad_token_id
    assert backbone.tokenizer.eos_token_id == reference.eos_token_id


@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_prefix_training_forward_equals_generation_on_bundled_models(alias):
    from reference import prefix_forward
    from softprompt.steering.prefix import prefix_cache, prefix_geometry

    backbone = load_backbone(alias)
    layers, kv_heads, head_dim = prefix_geometry(backbone.model)
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(layers, kv_heads, 5, head_dim, generator=generator)
    values = torch.randn(layers, kv_heads, 5, head_dim, generator=generator)
    ids = backbone.tokenizer("The weather today is", return_tensors="pt").input_ids
    with torch.no_grad():
        trained = prefix_forward(backbone.model, keys, values, ids, torch.ones_like(ids))
    out = backbone.model.generate(
        input_ids=ids,
        attention_mask=torch.ones((1, 5 + ids.shape[1]), dtype=torch.long),
        past_key_values=prefix_cache(backbone.model, keys, values, 1),
        max_new_tokens=1,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    torch.testing.assert_close(out.logits[0][0], trained[0, -1].float(), atol=1e-4, rtol=1e-4)
