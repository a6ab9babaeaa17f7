"""Incremental detokenization (decoding/text.py): a row's text decoded a few tokens at a time,
exact for byte-level BPE and SentencePiece tokenizers: the generated text is what follows the
prompt's text in the whole sequence's text (so echo = prompt + text, to the character), text
once handed out is never rewritten, the cost per token does not grow with the row, and the
same holds through the server, streamed or not, with the log-probabilities' offsets."""

from __future__ import annotations

import copy
import json

import httpx2
import pytest

from softprompt.decoding.text import CONTEXT, IncrementalDecoder, RowText, token_offsets
from softprompt.generation import SamplingOptions, generate
from softprompt.serving.server import Server
from test_output import byte_tokenizer

TEXTS = [
    "it was good, really good 😀 — 日本語のテキスト and café ñandú",
    "naïve ✓✓ emoji 👍🏽 at the end 🎉",
    "  spaces   and\nnew lines\t tabs ",
]


def sentencepiece_tokenizer(texts: list[str], size: int = 120):
    """A Llama-2-style SentencePiece tokenizer trained here: BPE over '▁'-marked words (a
    space becomes '▁' in front of the word), whose decoder drops the space that starts what
    it decodes, and a BOS added in front."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>"]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=size, special_tokens=specials))
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", core.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def sentencepiece(request):
    from conftest import corpus

    return sentencepiece_tokenizer(corpus())


def continuation(tokenizer, prompt: list[int], new: list[int]) -> str:
    """The text the new tokens add after the prompt's, from two whole decodes (the plain way)."""
    start = len(tokenizer.decode(prompt, skip_special_tokens=True))
    return tokenizer.decode(prompt + new, skip_special_tokens=True)[start:]


def pieces(tokenizer, prompt: list[int], new: list[int]) -> list[str]:
    decoder = IncrementalDecoder(tokenizer, prompt)
    return [decoder.push(token) for token in new] + [decoder.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_pieces_make_the_text_after_the_prompt(text):
    """Every split of a text into prompt and continuation, byte by byte (characters of up to
    four bytes split over tokens): the pieces add up to the continuation, and no piece holds
    a half character."""
    tokenizer = byte_tokenizer()
    ids = tokenizer(text).input_ids
    for cut in range(1, len(ids), 3):
        got = pieces(tokenizer, ids[:cut], ids[cut:])
        assert "".join(got) == continuation(tokenizer, ids[:cut], ids[cut:]).lstrip("\ufffd")
        assert not any("\ufffd" in piece for piece in got[:-1])


def test_sentencepiece_keeps_the_space_before_the_first_generated_word(sentencepiece):
    tokenizer = sentencepiece
    ids = tokenizer("it was good and the film was great").input_ids
    assert (
        tokenizer.decode(ids[3:4]) != tokenizer.decode(ids[2:4])[len(tokenizer.decode(ids[2:3])) :]
    )
    for cut in range(1, len(ids)):
        text = "".join(pieces(tokenizer, ids[:cut], ids[cut:]))
        assert text == continuation(tokenizer, ids[:cut], ids[cut:])
        assert tokenizer.decode(ids[:cut], skip_special_tokens=True) + text == tokenizer.decode(
            ids, skip_special_tokens=True
        )


def test_row_text_never_rewrites_and_costs_the_same_per_token_late_as_early():
    """300 tokens: every decode call covers a window of a few tokens (not the row so far), the
    handed-out pieces are the final text, and a stop string split over tokens still cuts."""
    tokenizer = byte_tokenizer()
    windows = []
    decode = tokenizer.decode

    def counting(ids, **kwargs):
        windows.append(len(ids))
        return decode(ids, **kwargs)

    tokenizer.decode = counting
    text = ("ab 😀 cd 日本 " * 40)[:300]
    ids = tokenizer(text + " STOP here").input_ids
    row = RowText(tokenizer, stop=("STOP",), prompt_ids=tokenizer("x").input_ids)
    out = []
    for token in ids:
        stopped = row.add(token)
        out.append(row.take_final(finished=stopped))
        if stopped:
            break
    assert stopped
    assert "".join(out) == row.text == text + " "
    assert max(windows) <= CONTEXT + 8, "a decode covered more than the last few tokens"
    assert len(windows) <= 3 * len(ids)


def test_token_offsets_place_each_token_in_the_text(sentencepiece):
    tokenizer = sentencepiece
    ids = tokenizer("the film was great and it was good").input_ids
    offsets = token_offsets(tokenizer, ids)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    ends = [*offsets[1:], len(text)]
    pieces_by_offset = [text[a:b] for a, b in zip(offsets, ends)]
    assert "".join(pieces_by_offset) == text
    assert pieces_by_offset[2].startswith(" ")  # a word after the first keeps its space


@pytest.fixture(scope="module")
def sentencepiece_llama(tiny, sentencepiece):
    """The tiny llama reading the SentencePiece tokenizer's ids (its vocabulary is larger)."""
    backbone = copy.copy(tiny["llama"])
    assert len(sentencepiece) <= backbone.model.get_input_embeddings().num_embeddings
    backbone.tokenizer = sentencepiece
    return backbone


def split(tokenizer, prompt: str, continued: str) -> list[int]:
    """The ids of `continued` as they follow `prompt`'s in the whole text's ids."""
    ids, head = tokenizer(prompt + continued).input_ids, tokenizer(prompt).input_ids
    assert ids[: len(head)] == head
    return ids[len(head) :]


def replay(monkeypatch, tokenizer, new: list[int]) -> None:
    """Every row picks the tokens `new` and then its EOS: what is under test is the text made
    of the tokens, not the random model's choice."""
    end = tokenizer.eos_token_id

    def picks(samplers, logits):
        picked = []
        for sampler in samplers:
            count = sampler.replayed = getattr(sampler, "replayed", -1) + 1
            picked.append(new[count] if count < len(new) else end)
        return picked

    monkeypatch.setattr("softprompt.decoding.update.sample_rows", picks)
    monkeypatch.setattr("softprompt.decoding.engine._eos_ids", lambda backbone: {end})


def test_generate_with_sentencepiece_is_the_text_after_the_prompt(sentencepiece_llama, monkeypatch):
    """The tokens of 'it was good and the film was great' after the prompt 'it was': the
    continuation keeps the space in front of 'good' (decoded alone, '▁good' is 'good')."""
    backbone = sentencepiece_llama
    new = split(backbone.tokenizer, "it was", " good and the film was great")
    replay(monkeypatch, backbone.tokenizer, new)
    assert not backbone.tokenizer.decode(new).startswith(" ")  # what decoding alone gives
    options = SamplingOptions(max_new_tokens=20, greedy=True)
    assert generate(backbone, ["it was"], None, options) == [" good and the film was great"]


def _post(url: str, body: dict) -> httpx2.Response:
    return httpx2.post(url + "/v1/completions", json=body, timeout=60)


def _streamed(url: str, body: dict) -> tuple[str, list[int]]:
    text, offsets = "", []
    with httpx2.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            text += choice["text"]
            if choice.get("logprobs"):
                offsets += choice["logprobs"]["text_offset"]
    return text, offsets


def test_served_echo_and_stream_are_exact_with_sentencepiece(sentencepiece_llama, monkeypatch):
    """echo's text is the prompt's text and the continuation, to the character; the stream
    adds up to the same text; the offsets streamed are the offsets of the whole reply, and
    each generated token's offset is where its text begins."""
    backbone = sentencepiece_llama
    prompt, continued = "the film was", " great and it was good"
    new = split(backbone.tokenizer, prompt, continued)
    replay(monkeypatch, backbone.tokenizer, new)
    body = {"prompt": prompt, "max_tokens": 12, "temperature": 0}
    with Server(model=backbone, port=0) as server:
        body["model"] = server.base_name
        echoed = _post(server.url, {**body, "echo": True, "logprobs": 0}).json()["choices"][0]
        plain = _post(server.url, body).json()["choices"][0]["text"]
        streamed, offsets = _streamed(
            server.url, {**body, "echo": True, "logprobs": 0, "stream": True}
        )
    assert plain == continued
    assert echoed["text"] == prompt + continued
    assert streamed == echoed["text"]
    assert offsets == echoed["logprobs"]["text_offset"]
    generated = offsets[-len(new) :]
    ends = [*generated[1:], len(echoed["text"])]
    texts = [echoed["text"][a:b] for a, b in zip(generated, ends)]
    assert generated[0] == len(prompt) and "".join(texts) == continued
    assert texts[0].startswith(" ")  # the first token's text with its space


@pytest.mark.slow
def test_gemma_tokenizer_pieces_make_the_text_after_the_prompt():
    """The bundled Gemma 3 tokenizer (SentencePiece with byte fallback for rare characters)."""
    from transformers import AutoTokenizer

    from softprompt.models.bundled import ensure_bundled

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_bundled("gemma3-270m")))
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        for cut in range(1, len(ids), 2):
            got = pieces(tokenizer, ids[:cut], ids[cut:])
            assert "".join(got) == continuation(tokenizer, ids[:cut], ids[cut:])
