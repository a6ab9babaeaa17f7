"""`softprompt serve` in-process on a tiny model, through the real `openai` client and httpx:
every endpoint, streaming, mixed-batch greedy parity with one-at-a-time generation for soft
prompts and prefixes of different lengths, requests joining a running batch, and every
failure case with its status code while the server keeps answering."""

from __future__ import annotations

import concurrent.futures
import time

import httpx2
import openai
import pytest
import torch

from softprompt.generation import SamplingOptions, generate
from softprompt.methods.artifact import model_record
from softprompt.methods.prefix import SavedPrefix
from softprompt.methods.prompt import SoftPrompt
from softprompt.serving.server import Server
from softprompt.session import predict
from softprompt.steering.prefix import PrefixKV, prefix_geometry

TASK = {
    "type": "classification",
    "data": "",
    "template": "{text} it was",
    "verbalizer": {"negative": " bad", "positive": " good"},
}
TEXTS = ["it was good", "awful", "the review was great and positive", "bad", "it was"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def write_adapters(backbone, folder) -> None:
    """Soft prompts of lengths 3 and 5 and prefixes of lengths 2 and 4 for `backbone`."""
    generator = torch.Generator().manual_seed(0)
    models = [model_record(backbone)]
    for length in (3, 5):
        embedding = torch.randn(length, backbone.hidden_size, generator=generator)
        SoftPrompt(embedding, models=models, task=TASK).save(folder / f"prompt{length}.safetensors")
    layers, heads, head_dim = prefix_geometry(backbone.model)
    for length in (2, 4):
        shape = (layers, heads, length, head_dim)
        kv = PrefixKV(
            torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        )
        SavedPrefix(kv, models=models).save(folder / f"prefix{length}.safetensors")


@pytest.fixture(scope="module")
def served(tiny_dirs, tmp_path_factory):
    from softprompt.models import load_backbone

    backbone = load_backbone(str(tiny_dirs["llama"]))
    backbone.tokenizer.chat_template = CHAT_TEMPLATE
    folder = tmp_path_factory.mktemp("adapters")
    write_adapters(backbone, folder)
    with Server(adapters_dir=folder, model=backbone, port=0, max_batch=8) as server:
        yield server


@pytest.fixture()
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


def alone(server, name: str, text: str, max_tokens: int) -> str:
    steering = server.adapters[name].steering
    options = SamplingOptions(max_new_tokens=max_tokens, greedy=True)
    return generate(server.backbone, [text], steering, options)[0]


def test_models_lists_the_base_model_and_every_adapter(client, served):
    names = [m.id for m in client.models.list().data]
    assert names == [served.base_name, "prefix2", "prefix4", "prompt3", "prompt5"]


def test_concurrent_mixed_requests_give_what_each_gives_alone(client, served):
    names = ["prompt3", "prefix2", served.base_name, "prompt5", "prefix4"] * 2
    jobs = [(name, TEXTS[i % len(TEXTS)], 4 + i) for i, name in enumerate(names)]

    def ask(job):
        name, text, max_tokens = job
        reply = client.completions.create(
            model=name, prompt=text, max_tokens=max_tokens, temperature=0
        )
        return reply.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        served_texts = list(pool.map(ask, jobs))
    assert served_texts == [alone(served, n, t, m) for n, t, m in jobs]


def test_a_short_request_joins_a_running_batch_and_leaves_first(client, served):
    long_done = {}

    def long_request():
        reply = client.completions.create(
            model="prefix4", prompt="it was", max_tokens=150, temperature=0
        )
        long_done["at"] = time.monotonic()
        return reply.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(long_request)
        deadline = time.monotonic() + 10
        while served.engine.running == 0 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert served.engine.running == 1  # the long request is decoding
        short = client.completions.create(
            model="prompt3", prompt="awful", max_tokens=3, temperature=0
        )
        short_at = time.monotonic()
        long_text = future.result()
    assert short_at < long_done["at"]
    assert short.choices[0].text == alone(served, "prompt3", "awful", 3)
    assert long_text == alone(served, "prefix4", "it was", 150)


def test_a_list_of_prompts_and_n_choices_with_usage(client, served):
    reply = client.completions.create(
        model="prompt5", prompt=["awful", "bad"], max_tokens=3, temperature=0, n=2
    )
    texts = [c.text for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert texts == [alone(served, "prompt5", t, 3) for t in ("awful", "awful", "bad", "bad")]
    prompt_tokens = sum(len(served.backbone.tokenizer(t).input_ids) for t in ("awful", "bad"))
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens


def test_streaming_sends_the_same_text_in_server_sent_events(client, served):
    chunks = list(
        client.completions.create(
            model="prefix2", prompt="it was good", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == alone(served, "prefix2", "it was good", 8)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    body = {"model": "prompt3", "prompt": "bad", "max_tokens": 3, "temperature": 0, "stream": True}
    raw = httpx2.post(served.url + "/v1/completions", json=body, timeout=30).text
    events = [line for line in raw.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_chat_goes_through_the_chat_template(client, served):
    messages = [{"role": "user", "content": "was it good?"}]
    reply = client.chat.completions.create(
        model="prompt3", messages=messages, max_tokens=5, temperature=0
    )
    rendered = served.backbone.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == alone(served, "prompt3", rendered, 5)
    streamed = client.chat.completions.create(
        model="prompt3", messages=messages, max_tokens=5, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed)
    assert text == reply.choices[0].message.content


def test_classify_gives_predicts_numbers(served):
    reply = httpx2.post(
        served.url + "/v1/classify", json={"model": "prompt3", "input": TEXTS[:3]}, timeout=30
    )
    assert reply.status_code == 200
    expected = predict(served.adapters["prompt3"].artifact, TEXTS[:3], served.backbone)
    for row, want in zip(reply.json()["data"], expected):
        assert row["label"] == want["label"]
        for label, p in want["probabilities"].items():
            assert row["probabilities"][label] == pytest.approx(p, abs=1e-6)


def test_sampling_is_seeded(client):
    def sample(seed):
        return (
            client.completions.create(
                model="prompt3",
                prompt="it was",
                max_tokens=8,
                temperature=1.0,
                top_p=0.9,
                seed=seed,
            )
            .choices[0]
            .text
        )

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(5)}) > 1


def test_stop_sequences_cut_the_text(client, served):
    full = alone(served, "prompt5", "it was good", 12)
    stop = full.split()[2]
    reply = client.completions.create(
        model="prompt5", prompt="it was good", max_tokens=12, temperature=0, stop=[stop]
    )
    assert reply.choices[0].text == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def error_of(response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "model"),
        ({"model": "prompt3", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "prompt3", "prompt": "x", "temperature": 5}, 400, "temperature"),
        ({"model": "prompt3", "prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"model": "prompt3", "prompt": "x", "n": 99}, 400, "n"),
        ({"model": "prompt3", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "prompt3"}, 400, "prompt"),
        ({"model": "prompt3", "prompt": "good " * 300}, 400, "prompt"),
        ({"model": "../../etc/passwd", "prompt": "x"}, 404, "model"),
    ],
)
def test_bad_requests_get_their_status_and_the_server_keeps_answering(served, body, status, param):
    response = httpx2.post(served.url + "/v1/completions", json=body, timeout=30)
    assert response.status_code == status
    assert error_of(response)["param"] == param
    ok = httpx2.post(
        served.url + "/v1/completions",
        json={"model": "prompt3", "prompt": "bad", "max_tokens": 2, "temperature": 0},
        timeout=30,
    )
    assert ok.status_code == 200


def test_malformed_json_and_the_context_limit_say_what_is_wrong(served):
    response = httpx2.post(served.url + "/v1/completions", content=b"{not json", timeout=30)
    assert response.status_code == 400 and "JSON" in error_of(response)["message"]
    long = {"model": "prompt3", "prompt": "good " * 300, "max_tokens": 4}
    message = error_of(httpx2.post(served.url + "/v1/completions", json=long, timeout=30))
    assert "at most 256" in message["message"] and message["code"] == "context_length_exceeded"
    bare = {"model": served.base_name, "input": ["x"]}
    assert httpx2.post(served.url + "/v1/classify", json=bare, timeout=30).status_code == 400


def test_the_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="prompt3", prompt="x", max_tokens=-3)


def test_a_client_that_goes_away_frees_its_row(served):
    body = {
        "model": "prefix4",
        "prompt": "it was",
        "max_tokens": 200,
        "temperature": 0,
        "stream": True,
    }
    with httpx2.stream("POST", served.url + "/v1/completions", json=body, timeout=30) as reply:
        next(reply.iter_lines())  # the request is decoding
    deadline = time.monotonic() + 5
    while served.engine.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.engine.running == 0


def test_health_and_metrics(served, client):
    client.completions.create(model="prompt3", prompt="bad", max_tokens=2, temperature=0)
    assert httpx2.get(served.url + "/health", timeout=10).json()["status"] == "ok"
    text = httpx2.get(served.url + "/metrics", timeout=10).text
    assert (
        'softprompt_requests_total{adapter="prompt3",endpoint="/v1/completions",status="200"}'
        in text
    )
    for name in (
        "softprompt_queue_length",
        "softprompt_batch_size_bucket",
        "softprompt_tokens_per_second",
        "softprompt_request_latency_seconds_bucket",
    ):
        assert name in text


def test_an_api_key_is_required_when_set(tiny):
    backbone = tiny["gpt2"]
    with Server(model=backbone, port=0, api_key="s3cret") as server:
        url = server.url + "/v1/models"
        assert httpx2.get(url, timeout=10).status_code == 401
        wrong = httpx2.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401 and error_of(wrong)["code"] == "invalid_api_key"
        good = httpx2.get(url, headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert good.status_code == 200
        assert httpx2.get(server.url + "/health", timeout=10).status_code == 200


def test_a_full_queue_answers_429_with_retry_after(tiny):
    server = Server(model=tiny["gpt2"], port=0, queue_size=2)
    engine_start = server.engine.start
    server.engine.start = lambda: None  # nothing drains the queue until we say so
    with server:
        body = {"model": server.base_name, "prompt": "bad", "max_tokens": 2}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            waiting = [
                pool.submit(httpx2.post, server.url + "/v1/completions", json=body, timeout=30)
                for _ in range(2)
            ]
            deadline = time.monotonic() + 5
            while server.engine.pending < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            full = httpx2.post(server.url + "/v1/completions", json=body, timeout=30)
            assert full.status_code == 429 and full.headers["retry-after"] == "1"
            assert error_of(full)["code"] == "queue_full"
            engine_start()
            assert [w.result().status_code for w in waiting] == [200, 200]


def test_artifacts_that_do_not_fit_are_refused_one_line_each(tiny, tmp_path):
    backbone = tiny["gpt2"]
    SoftPrompt(torch.zeros(3, backbone.hidden_size + 1)).save(tmp_path / "wide.safetensors")
    layers, heads, head_dim = prefix_geometry(backbone.model)
    shape = (layers + 1, heads, 2, head_dim)
    SavedPrefix(PrefixKV(torch.zeros(shape), torch.zeros(shape))).save(
        tmp_path / "deep.safetensors"
    )
    (tmp_path / "broken.safetensors").write_bytes(b"not a file")
    SoftPrompt(torch.zeros(2, backbone.hidden_size)).save(tmp_path / "fits.safetensors")
    server = Server(adapters_dir=tmp_path, model=backbone, port=0)
    assert list(server.adapters) == [server.base_name, "fits"]
    assert len(server.refused) == 3 and all("\n" not in line for line in server.refused)
    reasons = " ".join(server.refused)
    assert "broken.safetensors" in reasons and "not a readable" in reasons
    assert "hidden size" in reasons and "layers" in reasons
