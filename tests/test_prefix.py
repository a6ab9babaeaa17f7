"""Prefix injection core on tiny Llama (GQA), Gemma 3 (sliding layers), GPT-2 and GPT-NeoX."""

import pytest
import torch

from reference import prefix_forward
from softprompt.steering.prefix import prefix_cache, prefix_geometry, text_prefix

CAUSAL = ["llama", "gemma3", "gpt2", "gpt_neox"]


def random_prefix(model, length, seed=0):
    layers, kv_heads, head_dim = prefix_geometry(model)
    generator = torch.Generator().manual_seed(seed)
    shape = (layers, kv_heads, length, head_dim)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def random_ids(backbone, shapes, seed=0):
    """Token ids drawn from the model's vocabulary (past its first special ids), per shape."""
    generator = torch.Generator().manual_seed(seed)
    vocab = backbone.model.config.vocab_size
    return [torch.randint(10, vocab, shape, generator=generator) for shape in shapes]


def test_geometry_uses_key_value_heads(tiny):
    assert prefix_geometry(tiny["llama"].model) == (2, 2, 8)  # 4 query heads, 2 KV heads
    assert prefix_geometry(tiny["gpt2"].model) == (2, 4, 8)


@pytest.mark.parametrize("family", CAUSAL)
def test_text_prefix_reproduces_the_full_forward(tiny, family):
    """Prefix = the model's own keys/values of a text: continuing from it must give the same
    logits as running text + continuation at once (positions agree)."""
    backbone = tiny[family]
    tok = backbone.tokenizer
    first = tok("great movie it was", return_tensors="pt").input_ids
    rest = tok("good and great", add_special_tokens=False, return_tensors="pt").input_ids
    keys, values = text_prefix(backbone.model, first)
    with torch.no_grad():
        via_prefix = prefix_forward(backbone.model, keys, values, rest, torch.ones_like(rest))
        full = backbone.model(input_ids=torch.cat([first, rest], dim=1)).logits
    torch.testing.assert_close(via_prefix[0], full[0, first.shape[1] :], atol=1e-5, rtol=1e-4)


def test_text_prefix_keeps_a_text_longer_than_the_sliding_window(tiny):
    """Gemma 3's sliding layers keep only their window in a generation cache; a document in
    front (`evaluate --document`, a cartridge's text init) needs every position of every
    layer, and continuing from it must still equal the full forward."""
    backbone = tiny["gemma3"]
    window = backbone.model.config.sliding_window
    first, rest = random_ids(backbone, [(1, window + 20), (1, 5)])
    keys, values = text_prefix(backbone.model, first)
    assert keys.shape[2] == values.shape[2] == window + 20
    with torch.no_grad():
        via_prefix = prefix_forward(backbone.model, keys, values, rest, torch.ones_like(rest))
        full = backbone.model(input_ids=torch.cat([first, rest], dim=1)).logits
    torch.testing.assert_close(via_prefix[0], full[0, first.shape[1] :], atol=1e-5, rtol=1e-4)


def test_a_document_longer_than_the_window_in_front_of_packed_rows(tiny):
    """The whole-document condition scores short rows packed after a long document prefix:
    each row's logits must be those of document + row run at once."""
    from softprompt.steering.prefix import PrefixKV

    backbone = tiny["gemma3"]
    window = backbone.model.config.sliding_window
    document, rows = random_ids(backbone, [(1, window + 30), (3, 4)], seed=1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    prefix = PrefixKV(*text_prefix(backbone.model, document))
    with torch.no_grad():
        hidden, _ = prefix.hidden(backbone, rows * mask, mask)
        for row in range(3):
            length = int(mask[row].sum())
            ids = torch.cat([document, rows[row : row + 1, :length]], dim=1)
            full = backbone.model(input_ids=ids).logits[0, -length:]
            got = backbone.head_logits(hidden[row, :length])
            torch.testing.assert_close(got, full.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", CAUSAL)
def test_training_forward_equals_generation(tiny, family):
    backbone = tiny[family]
    keys, values = random_prefix(backbone.model, 3)
    ids = backbone.tokenizer("great movie", return_tensors="pt").input_ids
    with torch.no_grad():
        trained = prefix_forward(backbone.model, keys, values, ids, torch.ones_like(ids))
    cache = prefix_cache(backbone.model, keys, values, 1)
    mask = torch.ones((1, 3 + ids.shape[1]), dtype=torch.long)
    out = backbone.model.generate(
        input_ids=ids,
        attention_mask=mask,
        past_key_values=cache,
        max_new_tokens=3,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=backbone.tokenizer.pad_token_id,
    )
    torch.testing.assert_close(out.logits[0][0], trained[0, -1], atol=1e-5, rtol=1e-4)
    # the next generated tokens agree with a fresh training-style forward over the longer text
    longer = out.sequences[:, :-1]
    with torch.no_grad():
        again = prefix_forward(backbone.model, keys, values, longer, torch.ones_like(longer))
    assert (
        out.sequences[0, ids.shape[1] :].tolist()
        == again[0, ids.shape[1] - 1 :].argmax(-1).tolist()
    )


@pytest.mark.parametrize("family", CAUSAL)
def test_gradient_checkpointing_works_with_a_prefix(tiny_dirs, family):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[family], attn_implementation="eager")
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout"):
        if hasattr(model.config, name):
            setattr(model.config, name, 0.0)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.requires_grad_(False)
    ids = torch.tensor([[5, 10, 11, 12, 13]])
    grads, calls = [], []
    block = next(m for m in model.modules() if hasattr(m, "_can_checkpoint_with_cache"))
    inner = next(block.children())  # hooks on the block itself stay outside the checkpoint
    inner.register_forward_pre_hook(lambda *_: calls.append(1))
    for checkpointing in (False, True):
        calls.clear()
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.train()
        keys, values = (t.requires_grad_(True) for t in random_prefix(model, 4))
        logits = prefix_forward(model, keys, values, ids, torch.ones_like(ids))
        logits.float().logsumexp(-1).sum().backward()
        grads.append((keys.grad.clone(), values.grad.clone()))
        assert len(calls) == (2 if checkpointing else 1)  # recomputed during backward
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert grads[1][0].abs().sum() > 0
    layers = [m for m in model.modules() if hasattr(m, "_can_checkpoint_with_cache")]
    assert layers and all(m.gradient_checkpointing for m in layers)  # still checkpointed


def test_prefix_training_save_load_and_suffix_evaluation(tiny, tmp_path, monkeypatch, capsys):
    import json

    from conftest import ROOT
    from softprompt.config import validate_config
    from softprompt.methods import load_artifact
    from softprompt.methods.prefix import load_prefix
    from softprompt.steering.prefix import PrefixKV
    from softprompt.training.trainer import Trainer

    config = validate_config(
        {
            "method": "prefix",
            "models": ["tiny"],
            "task": {
                "type": "suffix",
                "data": str(ROOT / "examples/data/smiley"),
                "suffix": " good",
                "max_length": 32,
            },
            "prompt": {"length": 4, "reparameterization": "mlp", "mlp_hidden": 16},
            "train": {
                "steps": 12,
                "batch_size": 4,
                "lr": 0.01,
                "eval_every": 6,
                "best_metric": "loss",
                "warmup": 0,
            },
        }
    )
    summary = Trainer(config, tmp_path / "run", backbones=[tiny["llama"]], progress=False).run()
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run/metrics.jsonl").open()
        if '"train"' in line
    ]
    assert losses[-1] < losses[0]
    saved = load_prefix(tmp_path / "run" / "last.safetensors")
    assert saved.kv.keys.shape == (2, 2, 4, 8)  # layers, KV heads (GQA), L, head dim
    assert isinstance(load_artifact(tmp_path / "run" / "prompt.safetensors").kv, PrefixKV)
    assert summary["best_dev"]["loss"] <= summary["dev"]["mean"]["loss"]
    ids = tiny["llama"].tokenizer("great movie", return_tensors="pt").input_ids
    again = load_prefix(tmp_path / "run" / "last.safetensors")
    with torch.no_grad():
        a = prefix_forward(
            tiny["llama"].model, saved.kv.keys, saved.kv.values, ids, torch.ones_like(ids)
        )
        b = prefix_forward(
            tiny["llama"].model, again.kv.keys, again.kv.values, ids, torch.ones_like(ids)
        )
    assert torch.equal(a, b)
    with pytest.raises(Exception, match="key-value heads"):
        saved.check_fits(tiny["gpt2"].model, "gpt2")

    from test_cli import invoke

    code, out, err = invoke(
        monkeypatch,
        capsys,
        "evaluate",
        tmp_path / "run" / "last.safetensors",
        "--model",
        tiny["llama"].name,
        "--data",
        ROOT / "examples/data/smiley",
        "--samples",
        "6",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["samples"] == 6
    for key in ("with_prefix", "without_prefix"):
        assert 0.0 <= result["suffix_rate"][key] <= 1.0
        assert result["perplexity"][key] > 1.0


def test_text_init_starts_at_the_models_own_keys_and_values(tiny, tmp_path):
    from conftest import ROOT
    from softprompt.config import validate_config
    from softprompt.training.trainer import Trainer

    config = validate_config(
        {
            "method": "prefix",
            "models": ["tiny"],
            "task": {"type": "suffix", "data": str(ROOT / "examples/data/smiley")},
            "prompt": {"length": 8, "init": "text", "text": "great movie it was good"},
        }
    )
    trainer = Trainer(config, tmp_path, backbones=[tiny["llama"]], progress=False)
    start = trainer.fresh_state().module()
    ids = tiny["llama"].tokenizer("great movie it was good", return_tensors="pt").input_ids
    keys, values = text_prefix(tiny["llama"].model, ids)
    torch.testing.assert_close(start.keys, keys)
    torch.testing.assert_close(start.values, values)
