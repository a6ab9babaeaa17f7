"""A bounded load test on loopback: 520 requests from 16 clients, one in ten malformed, all
against an in-process server on a tiny model. Every good request gets its greedy text (the
same as alone), every bad one a 4xx error object, and nothing a 5xx. It stops by itself: a
fixed number of requests, each with a timeout."""

from __future__ import annotations

import concurrent.futures
import time

import httpx2
import pytest

from softprompt.generation import SamplingOptions, generate
from softprompt.serving.server import Server
from test_serve import TEXTS, write_adapters

CLIENTS = 16
REQUESTS = 520
BAD = [
    {"model": "prompt3", "prompt": "x", "max_tokens": 0},
    {"model": "no-such-adapter", "prompt": "x"},
    {"model": "prefix2", "prompt": "x", "temperature": -1},
    {"model": "prompt5"},
    "{not json",
]


@pytest.fixture(scope="module")
def loaded_server(tiny_dirs, tmp_path_factory):
    from softprompt.models import load_backbone

    backbone = load_backbone(str(tiny_dirs["llama"]))
    folder = tmp_path_factory.mktemp("load-adapters")
    write_adapters(backbone, folder)
    with Server(adapters_dir=folder, model=backbone, port=0, max_batch=16) as server:
        yield server


def test_500_mixed_requests_from_16_clients(loaded_server):
    server = loaded_server
    names = list(server.adapters)
    plan = []
    for i in range(REQUESTS):
        if i % 10 == 9:
            plan.append(("bad", BAD[(i // 10) % len(BAD)]))
        else:
            plan.append(("good", (names[i % len(names)], TEXTS[i % len(TEXTS)], 2 + i % 3)))
    expected = {}
    for kind, job in plan:
        if kind == "good" and job not in expected:
            name, text, tokens = job
            options = SamplingOptions(max_new_tokens=tokens, greedy=True)
            expected[job] = generate(
                server.backbone, [text], server.adapters[name].steering, options
            )[0]

    def send(item):
        kind, job = item
        with httpx2.Client(base_url=server.url, timeout=60) as http:
            if kind == "bad" and isinstance(job, str):
                return kind, job, http.post("/v1/completions", content=job.encode())
            body = (
                job
                if kind == "bad"
                else {"model": job[0], "prompt": job[1], "max_tokens": job[2], "temperature": 0}
            )
            return kind, job, http.post("/v1/completions", json=body)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(send, plan))
    assert time.monotonic() - started < 300
    statuses = [response.status_code for _, _, response in answers]
    assert all(status < 500 for status in statuses)
    for kind, job, response in answers:
        if kind == "good":
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["text"] == expected[job]
        else:
            assert 400 <= response.status_code < 500
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert sum(kind == "bad" for kind, _ in plan) == REQUESTS // 10
