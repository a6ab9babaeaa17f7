import pytest
import torch

from softprompt.errors import ModelError, UsageError
from softprompt.models import detect_kind, load_backbone, resolve_spec

EXPECTED_KIND = {"llama": "causal", "gpt2": "causal", "gpt_neox": "causal", "gemma3": "causal"}


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma3", "bert"])
def test_each_family_loads_frozen_with_the_right_kind(tiny, family):
    backbone = tiny[family]
    assert backbone.kind == EXPECTED_KIND.get(family, "masked")
    assert backbone.hidden_size == 32
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert backbone.tokenizer.pad_token_id is not None


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma3", "bert"])
def test_body_plus_head_equals_the_full_model(tiny, family):
    backbone = tiny[family]
    enc = backbone.tokenizer("great movie it was", return_tensors="pt")
    with torch.no_grad():
        full = backbone.model(**enc).logits[0]
        hidden = backbone.body(backbone.embed(enc.input_ids), enc.attention_mask)[0]
        all_rows = backbone.head_logits(hidden)
        some = torch.tensor([7, 11, 3])
        restricted = backbone.head_logits(hidden, some)
    torch.testing.assert_close(all_rows, full.float())
    torch.testing.assert_close(restricted, full[:, some].float())


def test_embedding_table_applies_embed_scale_where_the_model_has_one(tiny):
    gemma = tiny["gemma3"]
    scale = float(gemma.input_embeddings.embed_scale)
    assert scale == pytest.approx(32**0.5)
    table = gemma.embedding_table()
    assert table.dtype == torch.float32 and table.device.type == "cpu"
    torch.testing.assert_close(table, gemma.input_embeddings.weight.detach().float() * scale)
    ids = torch.tensor([3, 7, 11])
    with torch.no_grad():
        torch.testing.assert_close(table[ids], gemma.embed(ids).float())
    gpt2 = tiny["gpt2"]
    assert getattr(gpt2.input_embeddings, "embed_scale", None) is None
    assert torch.equal(gpt2.embedding_table(), gpt2.input_embeddings.weight.detach().float())


def test_kind_override_and_bfloat16(tiny_dirs):
    backbone = load_backbone(str(tiny_dirs["llama"]), dtype="bfloat16", kind="causal")
    assert backbone.dtype == torch.bfloat16
    with pytest.raises(UsageError, match="unknown dtype"):
        load_backbone(str(tiny_dirs["llama"]), dtype="float8")


def test_detect_kind_from_architectures_and_model_type():
    class Config:
        architectures = ("RobertaForMaskedLM",)
        model_type = "roberta"

    assert detect_kind(Config()) == "masked"
    Config.architectures = None
    assert detect_kind(Config()) == "masked"
    Config.model_type = "llama"
    assert detect_kind(Config()) == "causal"


def test_unknown_alias_suggests_the_closest():
    with pytest.raises(ModelError, match="did you mean 'smollm2-135m'"):
        resolve_spec("smollm2")


def test_missing_local_path_is_named():
    with pytest.raises(ModelError, match="model path not found: ./nowhere/model"):
        resolve_spec("./nowhere/model")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_spec(str(tmp_path))


def test_hub_id_offline_says_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelError, match="offline"):
        resolve_spec("some-org/some-model")


def test_missing_gguf_file():
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_spec("nowhere/model.gguf")


def test_remote_code_is_off_unless_asked(monkeypatch, tiny_dirs):
    seen = []
    import transformers

    real = transformers.AutoTokenizer.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    monkeypatch.delenv("SOFTPROMPT_TRUST_REMOTE_CODE", raising=False)
    load_backbone(str(tiny_dirs["gpt2"]))
    monkeypatch.setenv("SOFTPROMPT_TRUST_REMOTE_CODE", "1")
    load_backbone(str(tiny_dirs["gpt2"]))
    load_backbone(str(tiny_dirs["gpt2"]), trust_remote_code=False)
    assert seen == [False, True, False]
