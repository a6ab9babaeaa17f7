"""Tiny model families for tests and quick experiments: M small models of one architecture that
differ only in their seed (like MultiBERTs), optionally pre-trained briefly so they are not noise.

Everything is built in code from a word-level tokenizer over a given corpus: no hub, seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FAMILIES = ("llama", "gpt2", "gpt_neox", "gemma3", "bert")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]


def build_tokenizer(texts: list[str], masked: bool):
    """A lower-casing word-level tokenizer over the words of `texts` (BERT- or causal-style)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    words = {piece for text in texts for piece, _ in splitter.pre_tokenize_str(text.lower())}
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(words))}
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = splitter
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
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="<s>",
        eos_token="</s>",
    )


def build_model(family: str, vocab_size: int, seed: int = 0, hidden: int = 32):
    """A random 2-layer model of a family (grouped-query attention where the family has it)."""
    import transformers as tf

    torch.manual_seed(seed)
    ids = {"vocab_size": vocab_size, "pad_token_id": 0, "bos_token_id": 5, "eos_token_id": 6}
    sizes = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2}
    sizes |= {"num_attention_heads": 4, "max_position_embeddings": 256}
    if family == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=2, **sizes, **ids))
    if family == "gemma3":
        config = tf.Gemma3TextConfig(
            num_key_value_heads=2,
            head_dim=hidden // 4,
            sliding_window=64,
            layer_types=["sliding_attention", "full_attention"],
            **sizes,
            **ids,
        )
        return tf.Gemma3ForCausalLM(config)
    if family == "gpt_neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**sizes, **ids))
    if family == "gpt2":
        config = tf.GPT2Config(n_embd=hidden, n_layer=2, n_head=4, n_positions=256, **ids)
        return tf.GPT2LMHeadModel(config)
    if family == "bert":
        return tf.BertForMaskedLM(tf.BertConfig(**sizes, pad_token_id=0, vocab_size=vocab_size))
    raise ValueError(f"unknown tiny family {family!r}; use one of {', '.join(FAMILIES)}")


def pretrain(model, tokenizer, texts: list[str], steps: int, seed: int = 0) -> None:
    """A few hundred steps of masked or causal LM on `texts`, so the model is not pure noise."""
    masked = tokenizer.mask_token_id is not None
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(texts), (16,), generator=generator).tolist()
        batch = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True)
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        inputs = batch.input_ids.clone()
        if masked:
            chosen = (torch.rand(inputs.shape, generator=generator) < 0.15) & (labels != -100)
            labels = labels.masked_fill(~chosen, -100)
            inputs[chosen] = tokenizer.mask_token_id
        loss = model(input_ids=inputs, attention_mask=batch.attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def save_tiny(
    folder: str | Path,
    texts: list[str],
    family: str = "llama",
    *,
    seed: int = 0,
    hidden: int = 32,
    pretrain_steps: int = 0,
) -> Path:
    """Build (and optionally pre-train) one tiny model and save it with its tokenizer."""
    folder = Path(folder)
    recipe = {"family": family, "seed": seed, "hidden": hidden, "steps": pretrain_steps}
    marker = folder / "tiny.json"
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return folder
    tokenizer = build_tokenizer(texts, masked=family == "bert")
    model = build_model(family, len(tokenizer), seed=seed, hidden=hidden)
    if pretrain_steps:
        pretrain(model, tokenizer, texts, pretrain_steps, seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    marker.write_text(json.dumps(recipe))
    return folder


def tiny_family(
    folder: str | Path,
    texts: list[str],
    count: int,
    family: str = "bert",
    *,
    hidden: int = 32,
    pretrain_steps: int = 0,
) -> list[Path]:
    """`count` tiny models of one architecture and tokenizer, seeds 0..count-1, saved under
    `folder/seed-K`; already-built ones with the same recipe are reused (a cache)."""
    return [
        save_tiny(
            Path(folder) / f"seed-{seed}",
            texts,
            family,
            seed=seed,
            hidden=hidden,
            pretrain_steps=pretrain_steps,
        )
        for seed in range(count)
    ]


def corpus_texts(source: str | Path) -> list[str]:
    """All texts of the .jsonl/.csv/.txt files under a folder (or of one file)."""
    from softprompt.data import DataSpec, read_file
    from softprompt.errors import DataError

    root = Path(source)
    files = [root] if root.is_file() else sorted(root.rglob("*"))
    texts = []
    for path in files:
        if path.suffix in (".jsonl", ".csv", ".txt"):
            spec = DataSpec(str(path), label_field=None)
            texts += [example.text for example in read_file(path, spec)]
    if not texts:
        raise DataError(f"no texts found in {source} for the tiny models' vocabulary")
    return texts
