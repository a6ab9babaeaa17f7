"""Tiny random models of each supported family, built in code and saved to a temp folder so that
tests exercise the real loading path (`load_backbone` on a local directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SENTIMENT = ROOT / "examples" / "data" / "sentiment"
FAMILIES = ("llama", "gpt2", "gpt_neox", "gemma3", "bert")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]


def _vocabulary() -> list[str]:
    """Words of the sample sentiment data plus template and label words."""
    words: set[str] = set()
    for split in ("train", "dev", "test"):
        for line in (SENTIMENT / f"{split}.jsonl").read_text().splitlines():
            text = json.loads(line)["text"].lower()
            words.update(text.replace("\n", " ").split())
    extra = "review sentiment label : ? ! . , ' positive negative good bad great awful it was"
    words.update(extra.split())
    from tokenizers.pre_tokenizers import Whitespace

    pieces = {p for w in words for p, _ in Whitespace().pre_tokenize_str(w)}
    return SPECIALS + sorted(pieces)


def build_tokenizer(masked: bool):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(_vocabulary())}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")
    if masked:
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>"
    )


def build_model(family: str, vocab_size: int, seed: int = 0, hidden: int = 32):
    import transformers as tf

    torch.manual_seed(seed)
    common = {"vocab_size": vocab_size, "pad_token_id": 0}
    if family == "llama":
        config = tf.LlamaConfig(
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=5,
            eos_token_id=6,
            **common,
        )
        return tf.LlamaForCausalLM(config)
    if family == "gpt2":
        config = tf.GPT2Config(
            n_embd=hidden, n_layer=2, n_head=4, n_positions=256, bos_token_id=5, eos_token_id=6, **common
        )
        return tf.GPT2LMHeadModel(config)
    if family == "gpt_neox":
        config = tf.GPTNeoXConfig(
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            bos_token_id=5,
            eos_token_id=6,
            **common,
        )
        return tf.GPTNeoXForCausalLM(config)
    if family == "gemma3":
        config = tf.Gemma3TextConfig(
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=256,
            sliding_window=64,
            layer_types=["sliding_attention", "full_attention"],
            bos_token_id=5,
            eos_token_id=6,
            **common,
        )
        return tf.Gemma3ForCausalLM(config)
    if family == "bert":
        config = tf.BertConfig(
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            **common,
        )
        return tf.BertForMaskedLM(config)
    raise ValueError(family)


def save_tiny(family: str, folder: Path, seed: int = 0, hidden: int = 32) -> Path:
    tokenizer = build_tokenizer(masked=family == "bert")
    model = build_model(family, len(tokenizer), seed=seed, hidden=hidden)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny model directory per family."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny(tiny_dirs):
    """Loaded tiny backbones by family (loaded once per session; they are frozen)."""
    from softprompt.backbones import load_backbone

    return {family: load_backbone(str(path)) for family, path in tiny_dirs.items()}


@pytest.fixture()
def sentiment_dir() -> Path:
    return SENTIMENT


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
