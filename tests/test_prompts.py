import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from reference import prompted_hidden
from softprompt.errors import PromptFileError, UsageError
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt, init_embedding, load_prompt, save_prompt


def test_random_init_is_seeded_and_scaled(tiny):
    backbone = tiny["llama"]
    a = init_embedding(8, backbone, "random", seed=3)
    b = init_embedding(8, backbone, "random", seed=3)
    c = init_embedding(8, backbone, "random", seed=4)
    assert a.shape == (8, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    table_std = backbone.input_embeddings.weight.std()
    assert 0.5 * table_std < a.std() < 1.5 * table_std


def test_text_init_repeats_the_text_tokens(tiny):
    backbone = tiny["llama"]
    ids = backbone.tokenizer("great movie", add_special_tokens=False).input_ids
    assert len(ids) == 2
    prompt = init_embedding(5, backbone, "text", text="great movie")
    table = backbone.input_embeddings.weight
    expected = table[torch.tensor([ids[0], ids[1], ids[0], ids[1], ids[0]])]
    torch.testing.assert_close(prompt, expected)
    cut = init_embedding(1, backbone, "text", text="great movie")
    torch.testing.assert_close(cut, table[ids[:1]])


def test_vocab_init_uses_real_embedding_rows(tiny):
    backbone = tiny["llama"]
    prompt = init_embedding(6, backbone, "vocab", seed=1)
    table = backbone.input_embeddings.weight
    for row in prompt:
        assert (table - row).abs().sum(dim=1).min() == 0


def test_file_init_and_errors(tiny, tmp_path):
    backbone = tiny["llama"]
    source = SoftPrompt(torch.randn(3, 32))
    save_prompt(source, tmp_path / "p.safetensors")
    prompt = init_embedding(5, backbone, "file", file=str(tmp_path / "p.safetensors"))
    torch.testing.assert_close(prompt[:3], source.embedding)
    torch.testing.assert_close(prompt[3:], source.embedding[:2])
    with pytest.raises(UsageError, match="needs prompt.text"):
        init_embedding(4, backbone, "text")
    with pytest.raises(UsageError, match="at least 1"):
        init_embedding(0, backbone, "random")


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_save_load_round_trip_gives_identical_logits(tiny, tmp_path, family):
    backbone = tiny[family]
    prompt = SoftPrompt(
        init_embedding(4, backbone, "random", seed=0),
        models=[model_record(backbone)],
        task={"template": "{text}", "verbalizer": {"a": " good"}},
        training={"step": 3},
    )
    path = save_prompt(prompt, tmp_path / "prompt.safetensors")
    loaded = load_prompt(path)
    assert loaded.models[0]["hidden_size"] == 32
    assert loaded.task["verbalizer"] == {"a": " good"}
    assert loaded.training == {"step": 3}
    enc = backbone.tokenizer(["great movie"], return_tensors="pt")
    with torch.no_grad():
        before, _ = prompted_hidden(backbone, prompt.embedding, enc.input_ids, enc.attention_mask)
        after, _ = prompted_hidden(backbone, loaded.embedding, enc.input_ids, enc.attention_mask)
    assert torch.equal(backbone.head_logits(before), backbone.head_logits(after))
    assert not list(tmp_path.glob(".*tmp"))


def test_hidden_size_mismatch_names_both_sizes(tiny):
    prompt = SoftPrompt(torch.zeros(4, 48), models=[{"name": "other-model", "hidden_size": 48}])
    with pytest.raises(PromptFileError, match=r"hidden size 48 \(trained on other-model\).*32"):
        prompt.check_fits(tiny["llama"].hidden_size, "tiny-llama")


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(PromptFileError, match="not a readable safetensors file"):
        load_prompt(bad)
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, other)
    with pytest.raises(PromptFileError, match="no 'prompt' tensor"):
        load_prompt(other)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"prompt": torch.zeros(2, 2)}, wrong, metadata={"models": "{not json"})
    with pytest.raises(PromptFileError, match="'models' is not valid JSON"):
        load_prompt(wrong)
    typed = tmp_path / "typed.safetensors"
    save_file({"prompt": torch.zeros(2, 2)}, typed, metadata={"models": json.dumps({"a": 1})})
    with pytest.raises(PromptFileError, match="'models' must be a list"):
        load_prompt(typed)
    with pytest.raises(PromptFileError, match="not found"):
        load_prompt(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_saved_prompt_file_gets_the_umask_mode(umask, mode, tmp_path):
    """A prompt written through the atomic writer reads as a file `open()` made (0644 under
    022), not as mkstemp's private 0600."""
    prompt = SoftPrompt(embedding=torch.zeros(2, 4), models=[], task={})
    previous = os.umask(umask)
    try:
        save_prompt(prompt, tmp_path / "p.safetensors")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "p.safetensors").stat().st_mode) == mode
