"""Correctness items of the server found by reading (issue #34): a chat template that writes its
own BOS gets it once; /v1/classify has a bound on its inputs and is scored in slices between
decoding steps, so running streams keep flowing; an adapter's file is loaded off the event
loop, so the server answers other requests meanwhile."""

from __future__ import annotations

import concurrent.futures
import copy
import itertools
import threading
import time

import httpx2
import pytest

from softprompt.serving import adapters as adapters_module
from softprompt.serving.app import CLASSIFY_SLICE
from softprompt.serving.schemas import MAX_CLASSIFY_CHARACTERS, MAX_CLASSIFY_INPUTS
from softprompt.serving.server import Server
from softprompt.session import Session
from test_serve import TEXTS, error_of, write_adapters

# the shape of Llama 3's template: the BOS written by the template itself
LLAMA3_STYLE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . "
    "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}"
)


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    backbone = copy.copy(tiny["llama"])
    backbone.tokenizer = copy.deepcopy(backbone.tokenizer)
    backbone.tokenizer.chat_template = LLAMA3_STYLE
    folder = tmp_path_factory.mktemp("adapters")
    write_adapters(backbone, folder)
    with Server(adapters_dir=folder, model=backbone, port=0, max_batch=4) as server:
        yield server


def test_a_template_that_writes_its_bos_gets_one(served):
    tokenizer = served.backbone.tokenizer
    messages = [{"role": "user", "content": "was it good ?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(tokenizer.bos_token)
    once = tokenizer(rendered, add_special_tokens=False).input_ids
    assert once.count(tokenizer.bos_token_id) == 1
    assert tokenizer(rendered).input_ids.count(tokenizer.bos_token_id) == 2  # the old way
    body = {"model": served.base_name, "messages": messages, "max_tokens": 1}
    reply = httpx2.post(served.url + "/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200
    assert reply.json()["usage"]["prompt_tokens"] == len(once)


def test_classify_refuses_more_inputs_than_its_bound(served):
    url = served.url + "/v1/classify"
    many = {"model": "prompt3", "input": ["good"] * (MAX_CLASSIFY_INPUTS + 1)}
    reply = httpx2.post(url, json=many, timeout=30)
    assert reply.status_code == 400
    error = error_of(reply)
    assert error["param"] == "input" and str(MAX_CLASSIFY_INPUTS) in error["message"]
    long = {"model": "prompt3", "input": ["good " * (MAX_CLASSIFY_CHARACTERS // 5 + 1)]}
    reply = httpx2.post(url, json=long, timeout=30)
    assert reply.status_code == 400 and str(MAX_CLASSIFY_CHARACTERS) in error_of(reply)["message"]
    assert (
        httpx2.post(url, json={"model": "prompt3", "input": TEXTS}, timeout=30).status_code == 200
    )


def test_classify_is_scored_in_slices_between_the_steps_of_a_running_stream(served, monkeypatch):
    """A stream runs (its EOS biased away) while 4 slices' worth of texts are classified:
    each model call scores one slice at most, the stream takes a step between any two, and
    the labels are those of scoring all texts at once."""
    timeline: list[object] = []
    steps = served.engine.on_step
    monkeypatch.setattr(
        served.engine, "on_step", lambda *a: (timeline.append("step"), steps(*a))[1]
    )
    predict = Session.predict

    def recording(self, texts, *args):
        timeline.append(len(texts))
        return predict(self, texts, *args)

    monkeypatch.setattr(Session, "predict", recording)
    texts = [TEXTS[i % len(TEXTS)] for i in range(4 * CLASSIFY_SLICE)]
    eos = str(served.backbone.tokenizer.eos_token_id)
    stream = {"model": served.base_name, "prompt": "it was", "max_tokens": 120}
    stream |= {"stream": True, "logit_bias": {eos: -100}}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(_read_stream, served.url, stream)
        while timeline.count("step") < 3:
            time.sleep(0.01)
        reply = httpx2.post(
            served.url + "/v1/classify", json={"model": "prompt3", "input": texts}, timeout=60
        )
        pieces = running.result()
    assert reply.status_code == 200
    calls = [i for i, event in enumerate(timeline) if event != "step"]
    assert [timeline[i] for i in calls] == [CLASSIFY_SLICE] * 4
    assert all("step" in timeline[a:b] for a, b in itertools.pairwise(calls))
    assert pieces > 100
    whole = predict(served.adapters["prompt3"].session, texts)
    assert [row["label"] for row in reply.json()["data"]] == [row["label"] for row in whole]


def _read_stream(url: str, body: dict) -> int:
    with httpx2.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
        return sum(1 for line in response.iter_lines() if line.startswith("data: {"))


def test_an_adapter_file_loads_off_the_event_loop(tiny, tmp_path, monkeypatch):
    """With --max-loaded, an adapter is loaded on its first request: while its file loads
    (slowly, here), /health and a request to the loaded bare model are answered at once."""
    backbone = tiny["llama"]
    write_adapters(backbone, tmp_path)
    slow_load, started = adapters_module._load, threading.Event()

    def slow(*args):
        started.set()
        time.sleep(2.0)
        return slow_load(*args)

    monkeypatch.setattr(adapters_module, "_load", slow)
    with Server(adapters_dir=tmp_path, model=backbone, port=0, max_loaded=1) as server:
        body = {"model": "prompt3", "prompt": "it was", "max_tokens": 2}
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            loading = pool.submit(
                httpx2.post, server.url + "/v1/completions", json=body, timeout=30
            )
            assert started.wait(10)
            begun = time.monotonic()
            health = httpx2.get(server.url + "/health", timeout=30)
            bare = {**body, "model": server.base_name}
            other = httpx2.post(server.url + "/v1/completions", json=bare, timeout=30)
            waited = time.monotonic() - begun
            assert health.status_code == 200 and other.status_code == 200
            assert not loading.done() and waited < 1.5
            assert loading.result().status_code == 200
