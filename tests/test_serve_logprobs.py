"""Log-probabilities through the server as evaluation harnesses use them: the echoed prompt's
log-probabilities of a label word after the template sum to what `predict`'s task computes for
that word (a soft prompt, a prefix, the bare model); logprobs of generated tokens, in the
completions and chat shapes, streamed and whole; prompts given as token ids."""

from __future__ import annotations

import math

import httpx2
import pytest
import torch

from softprompt.data import Example
from softprompt.session import Session
from test_serve import TASK, client, served  # noqa: F401 (fixtures)

LABELS = list(TASK["verbalizer"])
TEXTS = ["it was good", "awful", "the review was great and positive"]


def _reference_scores(server, adapter: str, text: str) -> tuple[list[list[int]], torch.Tensor]:
    """The token ids of `text` in the template followed by each label word, and the task's
    full-vocabulary label-word log-probabilities [C] under the adapter's steering."""
    source = None if adapter == server.base_name else server.adapters[adapter].source
    task = {"template": TASK["template"], "verbalizer": TASK["verbalizer"]}
    session = Session(source, server.backbone, **task)
    task = session.classifier
    encoded = task.encode(Example(text=text, where="test"), with_label=False)
    with torch.no_grad():
        scores = task.class_scores(session.steering, task.collate([encoded]), full_vocab=True)
    if task.shared:  # one row for every label: the template, read where the label goes
        ids, _, words = encoded.rows[0]
        return [[*ids, word] for word in words], scores[0]
    return [list(ids) for ids, _, _ in encoded.rows], scores[0]


@pytest.mark.parametrize("adapter", ["base", "prefix4", "prompt3"])
def test_echoed_logprobs_of_a_label_word_equal_the_tasks_score(client, served, adapter):  # noqa: F811
    adapter = served.base_name if adapter == "base" else adapter
    for text in TEXTS:
        rows, expected = _reference_scores(served, adapter, text)
        word_lengths = [
            len(served.backbone.tokenizer(w, add_special_tokens=False).input_ids)
            for w in TASK["verbalizer"].values()
        ]
        for label, (ids, length) in enumerate(zip(rows, word_lengths)):
            reply = client.completions.create(
                model=adapter, prompt=ids, max_tokens=0, echo=True, logprobs=0
            )
            choice = reply.choices[0]
            logprobs = choice.logprobs.token_logprobs
            assert len(logprobs) == len(ids) and logprobs[0] is None
            assert reply.usage.completion_tokens == 0
            assert math.isclose(sum(logprobs[-length:]), float(expected[label]), abs_tol=1e-4)
    assert not torch.allclose(expected, torch.zeros_like(expected))


def test_a_text_prompt_scores_as_its_token_ids(client, served):  # noqa: F811
    text = "it was good it was good"
    ids = served.backbone.tokenizer(text).input_ids
    by_text = client.completions.create(
        model="prompt3", prompt=text, max_tokens=0, echo=True, logprobs=2
    ).choices[0]
    by_ids = client.completions.create(
        model="prompt3", prompt=ids, max_tokens=0, echo=True, logprobs=2
    ).choices[0]
    assert by_text.logprobs.token_logprobs == by_ids.logprobs.token_logprobs
    assert by_text.text == text
    offsets = by_text.logprobs.text_offset
    assert offsets == sorted(offsets) and offsets[-1] < len(text)


def test_generated_tokens_carry_their_logprobs_and_alternatives(client, served):  # noqa: F811
    reply = client.completions.create(
        model="prefix2", prompt="it was", max_tokens=6, temperature=0, logprobs=3
    )
    choice = reply.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == reply.usage.completion_tokens == len(lp.token_logprobs)
    assert "".join(lp.tokens).replace(" ", "") == choice.text.replace(" ", "")
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) in (3, 4)  # the three best, and the token itself if not among them
        assert logprob == pytest.approx(max(top.values()))  # greedy picks the most likely
        assert top[token] == pytest.approx(logprob)
    plain = client.completions.create(model="prefix2", prompt="it was", max_tokens=6, temperature=0)
    assert plain.choices[0].text == choice.text and plain.choices[0].logprobs is None


def test_echo_with_generation_returns_prompt_then_completion(client, served):  # noqa: F811
    reply = client.completions.create(
        model="prompt5", prompt="awful", max_tokens=4, temperature=0, echo=True, logprobs=1
    )
    choice = reply.choices[0]
    prompt_ids = served.backbone.tokenizer("awful").input_ids
    assert choice.text.startswith("awful")
    assert len(choice.logprobs.tokens) == len(prompt_ids) + reply.usage.completion_tokens
    assert choice.logprobs.token_logprobs[0] is None
    assert all(v is not None for v in choice.logprobs.token_logprobs[1:])


def test_chat_logprobs_in_the_chat_shape(client, served):  # noqa: F811
    reply = client.chat.completions.create(
        model="prompt3",
        messages=[{"role": "user", "content": "was it good"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert bytes(entry.bytes).decode() == entry.token
        assert len(entry.top_logprobs) == 2
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)


def test_streamed_chunks_carry_their_tokens_logprobs(client, served):  # noqa: F811
    whole = client.completions.create(
        model="prefix4", prompt="it was good", max_tokens=8, temperature=0, logprobs=1
    ).choices[0]
    chunks = list(
        client.completions.create(
            model="prefix4",
            prompt="it was good",
            max_tokens=8,
            temperature=0,
            logprobs=1,
            stream=True,
        )
    )
    streamed = [
        lp
        for c in chunks
        for lp in (
            c.choices[0].logprobs.token_logprobs if c.choices and c.choices[0].logprobs else []
        )
    ]
    assert streamed == whole.logprobs.token_logprobs
    chat = client.chat.completions.create(
        model="prefix4",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts = list(chat)
    tokens = [
        e.token
        for p in parts
        if p.choices and p.choices[0].logprobs
        for e in p.choices[0].logprobs.content
    ]
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert "".join(tokens).replace(" ", "") == text.replace(" ", "")
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens == len(tokens)


def test_token_id_prompts_and_their_errors(client, served):  # noqa: F811
    ids = served.backbone.tokenizer("it was good").input_ids
    by_ids = client.completions.create(
        model="prompt3", prompt=[ids, ids[:2]], max_tokens=3, temperature=0
    )
    by_text = client.completions.create(
        model="prompt3", prompt="it was good", max_tokens=3, temperature=0
    )
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert len(by_ids.choices) == 2
    vocab = served.backbone.model.get_input_embeddings().num_embeddings
    reply = httpx2.post(
        served.url + "/v1/completions", json={"model": "prompt3", "prompt": [1, vocab]}
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "prompt" and str(vocab) in error["message"]
    assert httpx2.get(served.url + "/health").status_code == 200
