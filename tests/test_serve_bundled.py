"""The server on the bundled SmolLM2 (marked slow; `make test` runs it): the openai client's
completions and chat completions, and greedy parity of a mixed batch with one-at-a-time
generation for soft prompts and prefixes of different lengths."""

from __future__ import annotations

import concurrent.futures
import sys
from pathlib import Path

import openai
import pytest

from softprompt.generation import SamplingOptions, generate
from softprompt.serving.server import Server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serve_parity import TEXTS, write_adapters

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_server(tmp_path_factory):
    from softprompt.models import load_backbone

    backbone = load_backbone("smollm2-135m")
    folder = tmp_path_factory.mktemp("smol-adapters")
    write_adapters(backbone, folder)
    with Server(adapters_dir=folder, model=backbone, port=0, max_batch=16) as server:
        yield server


def test_smollm2_mixed_batch_matches_one_at_a_time(smol_server):
    server = smol_server
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    names = list(server.adapters)
    jobs = [(names[i % len(names)], TEXTS[i % len(TEXTS)], 6 + 3 * i) for i in range(10)]

    def ask(job):
        reply = client.completions.create(
            model=job[0], prompt=job[1], max_tokens=job[2], temperature=0
        )
        return reply.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        served = list(pool.map(ask, jobs))
    for (name, text, tokens), got in zip(jobs, served):
        options = SamplingOptions(max_new_tokens=tokens, greedy=True)
        assert got == generate(server.backbone, [text], server.adapters[name].steering, options)[0]


def test_smollm2_chat_uses_the_models_own_template(smol_server):
    client = openai.OpenAI(base_url=smol_server.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 20  # the template's system prompt came along
