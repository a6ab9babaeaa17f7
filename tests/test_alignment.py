"""Embedding alignment and cross-model prompt transfer: shared vocabulary across word-marker
conventions, exact recovery of a planted linear map, identity transfer, the cache, the CLI."""

import json

import pytest
import torch
import yaml
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, WordPiece
from transformers import PreTrainedTokenizerFast

from conftest import corpus
from softprompt.alignment import cache
from softprompt.alignment.cache import load_alignment, read_alignment
from softprompt.alignment.fit import MIN_PAIRS, fit_alignment
from softprompt.alignment.vocabulary import (
    normalized_vocabulary,
    shared_vocabulary,
    word_convention,
)
from softprompt.crossmodel.transfer import random_like, transfer_prompt
from softprompt.errors import ModelError, UsageError
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt, load_prompt, save_prompt
from softprompt.models import load_backbone
from softprompt.models.tiny import save_tiny
from test_cli import invoke

# --- tokenizers with different word-boundary markers -----------------------------------------


def byte_level(text: str) -> str:
    """The GPT-2 byte-alphabet spelling of a text, as the tokenizers library writes it."""
    splitter = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return "".join(piece for piece, _ in splitter.pre_tokenize_str(text))


def wrap(core: Tokenizer, **specials) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=core, **specials)


def bytelevel_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2 style: 'Ġ' starts a word, non-ASCII text spelled in the byte alphabet."""
    texts = [" hello", "hello", " wor", "ld", " café", "é", "\n", " gpt_only"]
    vocab = {"<|endoftext|>": 0, **{byte_level(t): i + 1 for i, t in enumerate(texts)}}
    vocab[byte_level("é")[0]] = len(vocab)  # half of a UTF-8 character: no text on its own
    core = Tokenizer(BPE(vocab, []))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(["<|endoftext|>"])
    return wrap(core, eos_token="<|endoftext|>")


SP_VOCAB = ["<unk>", "<s>", "▁hello", "hello", "▁wor", "ld", "▁café", "é", "<0x0A>", "▁sp_only"]


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece style with a Metaspace decoder, byte fallback and a literal '\\n' token."""
    core = Tokenizer(BPE({t: i for i, t in enumerate(SP_VOCAB)}, [], byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.add_special_tokens(["<unk>", "<s>"])
    core.add_tokens([AddedToken("\n", normalized=False)])
    return wrap(core, unk_token="<unk>", bos_token="<s>")


def gemma_style_tokenizer() -> PreTrainedTokenizerFast:
    """Gemma's way of writing the same convention: Replace ' ' <-> '▁', byte fallback, fuse."""
    core = Tokenizer(BPE({t: i for i, t in enumerate(SP_VOCAB)}, [], byte_fallback=True))
    core.normalizer = normalizers.Replace(" ", "▁")
    core.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    core.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    core.add_special_tokens(["<unk>", "<s>"])
    return wrap(core, unk_token="<unk>", bos_token="<s>")


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """BERT style: '##' continues a word, every other token starts one."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "##hello", "wor", "##ld", "café", "##é"]
    core = Tokenizer(WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece(prefix="##")
    core.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    return wrap(core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


def token_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def as_text_pairs(pairs, tokenizer_a, tokenizer_b) -> set[tuple[str, str, str]]:
    """Pairs as (token in A, token in B, text): readable in a failing assertion."""
    to_a, to_b = tokenizer_a.convert_ids_to_tokens, tokenizer_b.convert_ids_to_tokens
    return {(to_a(a), to_b(b), text) for a, b, text in pairs}


def test_the_hand_built_tokenizers_spell_what_the_tests_expect():
    """Guards the fixtures themselves: each token decodes (by the library) to the text meant."""
    gpt = bytelevel_tokenizer()
    assert gpt.decode([token_id(gpt, byte_level(" café"))]) == " café"
    sp = metaspace_tokenizer()
    assert sp.decode([token_id(sp, "hello"), token_id(sp, "▁wor"), token_id(sp, "ld")]) == (
        "hello world"
    )
    bert = wordpiece_tokenizer()
    assert bert.decode([token_id(bert, "wor"), token_id(bert, "##ld")]) == "world"


@pytest.mark.parametrize(
    ("build", "kind"),
    [
        (bytelevel_tokenizer, "bytelevel"),
        (metaspace_tokenizer, "metaspace"),
        (gemma_style_tokenizer, "metaspace"),
        (wordpiece_tokenizer, "wordpiece"),
    ],
)
def test_word_convention_is_read_from_the_tokenizer(build, kind):
    assert word_convention(build()).kind == kind


@pytest.mark.parametrize("build_b", [metaspace_tokenizer, gemma_style_tokenizer])
def test_byte_level_and_sentencepiece_markers_match(build_b):
    gpt, sp = bytelevel_tokenizer(), build_b()
    expected = {
        (byte_level(" hello"), "▁hello", " hello"),
        (byte_level("hello"), "hello", "hello"),
        (byte_level(" wor"), "▁wor", " wor"),
        (byte_level("ld"), "ld", "ld"),
        (byte_level(" café"), "▁café", " café"),
        (byte_level("é"), "é", "é"),
    }
    if build_b is metaspace_tokenizer:  # the literal added "\n" matches GPT-2's 'Ċ'
        expected.add((byte_level("\n"), "\n", "\n"))
    assert as_text_pairs(shared_vocabulary(gpt, sp), gpt, sp) == expected


def test_byte_level_and_wordpiece_markers_match():
    gpt, bert = bytelevel_tokenizer(), wordpiece_tokenizer()
    expected = {
        (byte_level(" hello"), "hello", " hello"),
        (byte_level("hello"), "##hello", "hello"),
        (byte_level(" wor"), "wor", " wor"),
        (byte_level("ld"), "##ld", "ld"),
        (byte_level(" café"), "café", " café"),
        (byte_level("é"), "##é", "é"),
    }
    assert as_text_pairs(shared_vocabulary(gpt, bert), gpt, bert) == expected


def test_special_byte_fallback_and_partial_byte_tokens_are_left_out():
    sp, gemma = metaspace_tokenizer(), gemma_style_tokenizer()
    texts = {text for _, _, text in shared_vocabulary(sp, gemma)}
    assert texts == {" hello", "hello", " wor", "ld", " café", "é", " sp_only"}
    gpt_texts = set(normalized_vocabulary(bytelevel_tokenizer()))
    assert gpt_texts == {" hello", "hello", " wor", "ld", " café", "é", "\n", " gpt_only"}


# --- fitting on tiny models ------------------------------------------------------------------


@pytest.fixture()
def model_a(tiny_dirs):
    """A fresh tiny llama (hidden 32): tests may change its embedding table."""
    return load_backbone(str(tiny_dirs["llama"]))


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory):
    """A tiny llama of hidden size 48 with the same tokenizer (another seed)."""
    return save_tiny(tmp_path_factory.mktemp("wide") / "llama-48", corpus(), hidden=48, seed=1)


@pytest.fixture()
def model_b(wide_dir):
    return load_backbone(str(wide_dir))


def plant(model_a, model_b, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Make B's embedding table exactly A's mapped by x @ weight + bias."""
    table = model_a.input_embeddings.weight.detach()
    model_b.input_embeddings.weight.data = table @ weight + bias


def test_ridge_recovers_a_planted_linear_map(model_a, model_b):
    generator = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(32, 48, generator=generator), torch.randn(48, generator=generator)
    plant(model_a, model_b, weight, bias)
    fitted = fit_alignment(model_a, model_b, "ridge", ridge_lambda=1e-9)
    assert fitted.weight.shape == (32, 48)
    torch.testing.assert_close(fitted.weight, weight, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fitted.bias, bias, atol=1e-3, rtol=1e-3)
    assert fitted.quality["top1"] == 1.0
    assert fitted.quality["top10"] == 1.0
    assert (
        fitted.quality["heldout_pairs"] + fitted.quality["train_pairs"]
        == (fitted.quality["shared_tokens"])
    )


def test_procrustes_recovers_a_planted_scaled_rotation_both_ways(model_a, model_b):
    generator = torch.Generator().manual_seed(2)
    rotation = torch.linalg.qr(torch.randn(48, 32, generator=generator)).Q.T  # orthonormal rows
    weight, bias = 1.7 * rotation, torch.randn(48, generator=generator)
    plant(model_a, model_b, weight, bias)
    forward = fit_alignment(model_a, model_b, "procrustes")
    torch.testing.assert_close(forward.weight, weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(forward.bias, bias, atol=1e-4, rtol=1e-4)
    assert forward.quality["top1"] == 1.0
    backward = fit_alignment(model_b, model_a, "procrustes")  # 48 -> 32: a projection
    torch.testing.assert_close(backward.weight, rotation.T / 1.7, atol=1e-4, rtol=1e-4)
    assert backward.quality["top1"] == 1.0


def test_held_out_split_is_seeded_and_kept_out_of_the_fit(model_a, model_b):
    one = fit_alignment(model_a, model_b, "ridge", seed=3)
    two = fit_alignment(model_a, model_b, "ridge", seed=3)
    other = fit_alignment(model_a, model_b, "ridge", seed=4)
    torch.testing.assert_close(one.weight, two.weight)
    assert not torch.allclose(one.weight, other.weight)
    none_held = fit_alignment(model_a, model_b, "ridge", holdout=0.0)
    assert none_held.quality["heldout_pairs"] == 0 and none_held.quality["top1"] is None


def test_apply_maps_batches_and_keeps_dtype(model_a, model_b):
    fitted = fit_alignment(model_a, model_b, "procrustes")
    x = torch.randn(2, 3, 32, dtype=torch.bfloat16)
    y = fitted.apply(x)
    assert y.shape == (2, 3, 48) and y.dtype == torch.bfloat16
    expected = x.float().reshape(6, 32) @ fitted.weight + fitted.bias
    torch.testing.assert_close(y.float().reshape(6, 48), expected, atol=0.1, rtol=0.02)
    with pytest.raises(UsageError, match="size 32"):
        fitted.apply(torch.zeros(4, 48))


# --- prompt transfer -------------------------------------------------------------------------


def prompt_for(backbone, length: int = 5, seed: int = 0) -> SoftPrompt:
    table = backbone.input_embeddings.weight.detach()
    noise = torch.randn(length, table.shape[1], generator=torch.Generator().manual_seed(seed))
    return SoftPrompt(
        embedding=noise * table.std() + table.mean(0),
        models=[model_record(backbone)],
        task={"template": "review: {text} sentiment:"},
        init={"init": "random", "seed": seed},
        training={"best_step": 3},
    )


@pytest.mark.parametrize(
    ("method", "options"), [("procrustes", {}), ("ridge", {"ridge_lambda": 0})]
)
def test_transfer_between_identical_models_is_the_identity(
    monkeypatch, tmp_path, model_a, method, options
):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    prompt = prompt_for(model_a)
    moved = transfer_prompt(prompt, model_a, method, **options)  # source from the metadata
    torch.testing.assert_close(moved.embedding, prompt.embedding, atol=1e-5, rtol=1e-4)
    saved = load_prompt(save_prompt(moved, tmp_path / "moved.safetensors"))
    assert saved.models[0]["name"] == model_a.name
    assert saved.init["init"] == "transfer"
    assert saved.init["source_models"] == prompt.models
    assert saved.init["source_training"] == {"best_step": 3}
    assert saved.init["alignment"]["method"] == method
    assert saved.init["alignment"]["quality"]["top1"] == 1.0
    assert saved.task == prompt.task


def test_transfer_changes_the_hidden_size_and_follows_the_map(
    monkeypatch, tmp_path, model_a, model_b
):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    prompt = prompt_for(model_a)
    fitted = load_alignment(model_a, model_b, "ridge")
    moved = transfer_prompt(prompt, model_b, "ridge", source=model_a)
    assert moved.hidden_size == 48 and moved.length == prompt.length
    expected = prompt.embedding @ fitted.weight + fitted.bias
    torch.testing.assert_close(moved.embedding, expected)
    assert moved.models == [model_record(model_b)]


def test_random_baseline_keeps_each_tokens_norm():
    prompt = SoftPrompt(embedding=torch.randn(4, 8) * torch.arange(1, 5.0)[:, None])
    baseline = random_like(prompt, seed=1)
    torch.testing.assert_close(baseline.embedding.norm(dim=1), prompt.embedding.norm(dim=1))
    assert not torch.allclose(baseline.embedding, prompt.embedding)


# --- cache -----------------------------------------------------------------------------------


def test_cache_is_reused_and_keyed_by_models_and_settings(monkeypatch, tmp_path, model_a, model_b):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path))
    calls = []
    real_fit = fit_alignment

    def counting_fit(*args, **kwargs):
        calls.append(args[2] if len(args) > 2 else kwargs.get("method"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(cache, "fit_alignment", counting_fit)
    first = load_alignment(model_a, model_b, "ridge")
    assert first.path and first.path.startswith(str(tmp_path / "alignments"))
    again = load_alignment(model_a, model_b, "ridge")
    assert len(calls) == 1  # read from the file, not refitted
    torch.testing.assert_close(again.weight, first.weight)
    assert again.quality == first.quality and again.path == first.path
    load_alignment(model_a, model_b, "ridge", ridge_lambda=0.5)
    load_alignment(model_a, model_b, "procrustes")
    load_alignment(model_a, model_b, "ridge", refit=True)
    assert len(calls) == 4
    model_b.input_embeddings.weight.data[3] += 1.0  # another model: another key
    changed = load_alignment(model_a, model_b, "ridge")
    assert len(calls) == 5 and changed.path != first.path
    files = sorted(p.name for p in (tmp_path / "alignments").iterdir())
    assert len(files) == 4 and all(name.endswith(".safetensors") for name in files)


def test_a_corrupt_cache_file_is_refitted(monkeypatch, tmp_path, model_a, model_b):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path))
    first = load_alignment(model_a, model_b, "procrustes")
    with open(first.path, "wb") as handle:
        handle.write(b"not safetensors")
    again = load_alignment(model_a, model_b, "procrustes")
    torch.testing.assert_close(again.weight, first.weight)
    assert read_alignment(first.path).method == "procrustes"


# --- errors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stranger_dir(tmp_path_factory):
    """A tiny llama whose vocabulary shares almost nothing with the sentiment corpus."""
    return save_tiny(tmp_path_factory.mktemp("stranger") / "llama", ["xyzzy qwerty plugh"])


def test_too_few_shared_tokens_is_a_clear_error(model_a, stranger_dir):
    stranger = load_backbone(str(stranger_dir))
    assert len(shared_vocabulary(model_a.tokenizer, stranger.tokenizer)) < MIN_PAIRS
    with pytest.raises(ModelError, match=r"share only \d+ token\(s\).*at least 10"):
        fit_alignment(model_a, stranger, "ridge")


def test_bad_settings_are_usage_errors(model_a):
    with pytest.raises(UsageError, match="unknown alignment method 'cca'"):
        fit_alignment(model_a, model_a, "cca")
    with pytest.raises(UsageError, match="holdout must be between 0 and 0.5"):
        fit_alignment(model_a, model_a, "ridge", holdout=0.9)
    with pytest.raises(UsageError, match="ridge_lambda"):
        load_alignment(model_a, model_a, "ridge", ridge_lambda=-1)


def test_prompt_without_a_recorded_model_needs_a_source(model_a):
    anonymous = SoftPrompt(embedding=torch.zeros(2, 32))
    with pytest.raises(UsageError, match="names no model"):
        transfer_prompt(anonymous, model_a)


# --- command line ----------------------------------------------------------------------------


def one_line_error(code, err, expected_code, fragment):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return code == expected_code and len(lines) == 1 and fragment in lines[0]


def write_config(tmp_path, model_dir, data) -> str:
    config = {
        "models": [str(model_dir)],
        "task": {
            "data": str(data),
            "template": "review: {text} sentiment:",
            "verbalizer": {"negative": " bad", "positive": " good"},
        },
        "prompt": {"length": 4},
        "train": {"steps": 2, "batch_size": 4},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_cli_transfer_writes_the_prompt_and_evaluates_it(
    monkeypatch, capsys, tmp_path, model_a, wide_dir, sentiment_dir
):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    source = save_prompt(prompt_for(model_a, length=4), tmp_path / "a.safetensors")
    target = tmp_path / "out" / "b.safetensors"
    config = write_config(tmp_path, wide_dir, sentiment_dir)
    args = ["transfer", source, "--to", wide_dir, "--out", target, "--method", "ridge"]
    code, out, err = invoke(monkeypatch, capsys, *args, "--config", config, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["path"] == str(target)
    assert result["alignment"]["method"] == "ridge"
    assert 0.0 <= result["alignment"]["quality"]["top1"] <= 1.0
    moved = load_prompt(target)
    assert moved.hidden_size == 48 and moved.length == 4
    assert moved.init["alignment"]["source"] == str(model_a.name)
    rows = {row["row"]: row for row in result["evaluation"]}
    expected_rows = {
        "zero-shot",
        "transferred",
        "random (same norms)",
        "source prompt on its model",
    }
    assert set(rows) == expected_rows
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["examples"] > 0 for row in rows.values())
    assert rows["source prompt on its model"]["model"] == model_a.name
    assert rows["transferred"]["model"] == str(wide_dir)
    code, out, err = invoke(monkeypatch, capsys, *args)  # human-readable, cached map
    assert code == 0, err
    assert "top-1" in out and str(target) in out


def test_cli_align_prints_both_directions(monkeypatch, capsys, tmp_path, tiny_dirs, wide_dir):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    code, out, err = invoke(monkeypatch, capsys, "align", tiny_dirs["llama"], wide_dir, "--json")
    assert code == 0, err
    result = json.loads(out)
    sources = [d["source"] for d in result["directions"]]
    assert sources == [str(tiny_dirs["llama"]), str(wide_dir)]
    assert all(d["shared_tokens"] >= MIN_PAIRS for d in result["directions"])


def test_cli_transfer_errors_are_one_line(
    monkeypatch, capsys, tmp_path, model_a, wide_dir, stranger_dir
):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    source = save_prompt(prompt_for(model_a, length=4), tmp_path / "a.safetensors")
    target = tmp_path / "b.safetensors"
    base = ["transfer", source, "--out", target]
    code, _, err = invoke(monkeypatch, capsys, *base, "--to", wide_dir, "--method", "cca")
    assert one_line_error(code, err, 2, "unknown alignment method 'cca'"), err
    code, _, err = invoke(monkeypatch, capsys, "transfer", source, "--to", wide_dir)
    assert one_line_error(code, err, 2, "--out"), err
    code, _, err = invoke(monkeypatch, capsys, "transfer", source, "--out", target)
    assert one_line_error(code, err, 2, "--to"), err
    code, _, err = invoke(monkeypatch, capsys, *base, "--to", stranger_dir)
    assert one_line_error(code, err, 1, "share only"), err
    assert not target.exists()
    assert not list(tmp_path.glob(".b.safetensors*"))
