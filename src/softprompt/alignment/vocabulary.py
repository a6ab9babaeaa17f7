"""Shared vocabulary between two tokenizers, across their word-boundary conventions.

Two models with different tokenizers still share many token strings (" the", "ing", "\\n"),
but each tokenizer marks "this token starts a word" its own way: GPT-2's byte-level BPE
spells a space 'Ġ', SentencePiece spells it '▁', and WordPiece marks the tokens that do NOT
start a word with '##'. Normalising every token to plain text with a leading space for "starts
a word" lets the two vocabularies be matched string for string; the pairs found are what an
embedding alignment (softprompt.alignment.fit) is fitted on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: tokenizers are duck-typed, transformers is not needed
    from transformers import PreTrainedTokenizerBase

BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass(frozen=True)
class WordConvention:
    """How a tokenizer marks word boundaries in its token strings.

    bytelevel: GPT-2 byte alphabet ('Ġ' is a space); metaspace: `marker` (usually '▁') is a
    space; wordpiece: `marker` (usually '##') starts a token that continues a word and every
    other token starts one; plain: token strings are text as is.
    """

    kind: str
    marker: str = ""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the byte-level BPE alphabet)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, chars)}


BYTE_DECODER = {char: byte for byte, char in _bytes_to_unicode().items()}


def _component_nodes(component) -> Iterator[dict]:
    """The JSON nodes of a tokenizers decoder or pre-tokenizer, sequences flattened."""
    if component is None:
        return
    stack = [json.loads(component.__getstate__())]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.get("decoders") or [])
            stack.extend(node.get("pretokenizers") or [])


def word_convention(tokenizer: PreTrainedTokenizerBase) -> WordConvention:
    """The tokenizer's word-boundary convention, read from its decoder and pre-tokenizer (fast
    tokenizers), else guessed from which marker its vocabulary uses most."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return _guess_convention(tokenizer.get_vocab())
    nodes = [*_component_nodes(backend.decoder), *_component_nodes(backend.pre_tokenizer)]
    types = {node.get("type") for node in nodes}
    if "ByteLevel" in types:
        return WordConvention("bytelevel")
    for node in nodes:
        if node.get("type") == "Metaspace":
            return WordConvention("metaspace", node.get("replacement", "▁"))
        if node.get("type") == "Replace" and node.get("content") == " ":
            pattern = (node.get("pattern") or {}).get("String")
            if pattern and pattern != " ":
                return WordConvention("metaspace", pattern)
    for node in nodes:
        if node.get("type") == "WordPiece":
            return WordConvention("wordpiece", node.get("prefix", "##"))
    if type(backend.model).__name__ == "WordPiece":
        return WordConvention("wordpiece", backend.model.continuing_subword_prefix)
    return _guess_convention(tokenizer.get_vocab())


def _guess_convention(vocab: dict[str, int]) -> WordConvention:
    counts = {
        WordConvention("bytelevel"): sum(t.startswith("Ġ") for t in vocab),
        WordConvention("metaspace", "▁"): sum(t.startswith("▁") for t in vocab),
        WordConvention("wordpiece", "##"): sum(t.startswith("##") for t in vocab),
    }
    best = max(counts, key=counts.get)
    return best if counts[best] > 0.01 * len(vocab) else WordConvention("plain")


def normalize_token(token: str, convention: WordConvention) -> str | None:
    """A token's text with a leading space for "starts a word"; None when it is no text (a
    byte-fallback token, or byte-level bytes that are not whole UTF-8 characters)."""
    if BYTE_FALLBACK.match(token):
        return None
    if convention.kind == "bytelevel":
        try:
            return bytes(BYTE_DECODER[char] for char in token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return None
    if convention.kind == "metaspace":
        return token.replace(convention.marker, " ")
    if convention.kind == "wordpiece":
        marker = convention.marker
        return token[len(marker) :] if marker and token.startswith(marker) else " " + token
    return token


def normalized_vocabulary(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Normalised text -> token id for every ordinary token (special and byte-fallback tokens
    left out; added non-special tokens taken literally; the lowest id wins a duplicate)."""
    convention = word_convention(tokenizer)
    added = dict(getattr(tokenizer, "added_tokens_decoder", None) or {})
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    special |= {index for index, token in added.items() if getattr(token, "special", False)}
    table: dict[str, int] = {}
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if index in special:
            continue
        text = str(added[index]) if index in added else normalize_token(token, convention)
        if text and text not in table:
            table[text] = index
    return table


def shared_vocabulary(
    tokenizer_a: PreTrainedTokenizerBase, tokenizer_b: PreTrainedTokenizerBase
) -> list[tuple[int, int, str]]:
    """(id in A, id in B, text) for every token text both tokenizers have, by A's id.

    Texts are compared after normalising each tokenizer's word-boundary marker to a leading
    space: GPT-2 'Ġhello', SentencePiece '▁hello' and WordPiece 'hello' are all ' hello';
    'hello', '##hello' and a bare 'hello' continuing a word are all 'hello'.
    """
    vocab_a = normalized_vocabulary(tokenizer_a)
    vocab_b = normalized_vocabulary(tokenizer_b)
    pairs = [(index, vocab_b[text], text) for text, index in vocab_a.items() if text in vocab_b]
    return sorted(pairs)
