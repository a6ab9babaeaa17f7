"""`softprompt serve` with a KV memory budget (`--max-kv-tokens`, `--kv-memory`): requests
that do not fit now wait and then give what they give alone, one that can never fit is a 400
naming the budget, and the two options together are a usage error."""

from __future__ import annotations

import concurrent.futures

import httpx2
import pytest

from softprompt.errors import UsageError
from softprompt.generation import SamplingOptions, generate
from softprompt.serving.server import Server


def test_requests_beyond_the_kv_budget_wait_and_match_alone(tiny):
    backbone = tiny["llama"]
    texts = ["it was good", "awful", "the review was", "bad"]
    # 32 tokens: two rows of one block each at a time, though max_batch is 4
    with Server(model=backbone, port=0, max_batch=4, max_kv_tokens=32) as server:
        rows: list[int] = []
        step = server.engine.on_step
        server.engine.on_step = lambda r, t: (rows.append(r), step(r, t))
        bodies = [
            {"model": server.base_name, "prompt": t, "max_tokens": 6, "temperature": 0}
            for t in texts
        ]
        url = server.url + "/v1/completions"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda b: httpx2.post(url, json=b, timeout=60), bodies))
        assert [a.status_code for a in answers] == [200] * 4
        got = [a.json()["choices"][0]["text"] for a in answers]
        options = SamplingOptions(max_new_tokens=6, greedy=True)
        assert got == [generate(backbone, [t], None, options)[0] for t in texts]
        assert max(rows) <= 2
        too_long = {"model": server.base_name, "prompt": "good " * 20, "max_tokens": 30}
        answer = httpx2.post(url, json=too_long, timeout=30)
        error = answer.json()["error"]
        assert answer.status_code == 400 and error["code"] == "kv_memory_exceeded"
        assert "at most 32" in error["message"] and "--max-kv-tokens" in error["message"]


def test_kv_memory_and_max_kv_tokens_together_are_refused(tiny):
    with pytest.raises(UsageError, match="--kv-memory or --max-kv-tokens"):
        Server(model=tiny["llama"], port=0, kv_memory=1.0, max_kv_tokens=64)


def test_kv_memory_in_gigabytes_sets_the_budget(tiny):
    server = Server(model=tiny["llama"], port=0, kv_memory=0.001)
    pool = server.engine.pool
    assert pool.max_blocks == int(1e6 // pool.bytes_per_block())
