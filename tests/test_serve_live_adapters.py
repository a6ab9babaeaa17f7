"""Adapters that come, change and go while the server runs: 8 clients stream while an adapter
is added, one replaced and one removed; no request fails and every answer equals its adapter
run alone. Also: --max-loaded, names that point out of the folder, a misfit refused with its
reason in GET /v1/models, and two replicas on one folder."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time

import httpx2
import openai
import pytest
import torch

from softprompt.generation import SamplingOptions, generate
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt, load_prompt
from softprompt.serving.server import Server

TEXTS = ["it was good", "awful", "the review was great and positive", "bad"]
TOKENS = 6


def write_prompt(backbone, path, seed: int, width: int | None = None) -> None:
    """A random soft prompt for `backbone` (of another width: one that does not fit)."""
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(3, width or backbone.hidden_size, generator=generator)
    SoftPrompt(embedding, models=[model_record(backbone)]).save(path)


def alone(backbone, path, text: str, tokens: int = TOKENS) -> str:
    steering = load_prompt(path).steering_for(backbone)
    options = SamplingOptions(max_new_tokens=tokens, greedy=True)
    return generate(backbone, [text], steering, options)[0]


def listed(server) -> dict[str, dict]:
    rows = httpx2.get(server.url + "/v1/models").json()["data"]
    return {row["id"]: row for row in rows}


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server did not pick the change up in time"
        time.sleep(0.05)


@pytest.fixture()
def backbone(tiny_dirs):
    from softprompt.models import load_backbone

    return load_backbone(str(tiny_dirs["llama"]))


def test_adapters_added_replaced_and_removed_while_8_clients_stream(backbone, tmp_path):
    folder = tmp_path / "adapters"
    folder.mkdir()
    versions = {"keep": tmp_path / "keep.v1", "swap": tmp_path / "swap.v1"}
    write_prompt(backbone, versions["keep"], 1)
    write_prompt(backbone, versions["swap"], 2)
    write_prompt(backbone, tmp_path / "swap.v2", 3)
    write_prompt(backbone, tmp_path / "new.v1", 4)
    for name in ("keep", "swap"):
        (folder / f"{name}.safetensors").write_bytes(versions[name].read_bytes())
    expected = {
        (name, version): [alone(backbone, tmp_path / f"{name}.{version}", t) for t in TEXTS]
        for name, version in [("keep", "v1"), ("swap", "v1"), ("swap", "v2"), ("new", "v1")]
    }
    open_names = {"keep", "swap"}
    stop, answers, failures = threading.Event(), [], []

    with Server(
        adapters_dir=folder, model=backbone, port=0, max_batch=8, watch_interval=0.1
    ) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)

        def stream_requests(worker: int) -> None:
            step = 0
            while not stop.is_set():
                name = sorted(open_names)[(worker + step) % len(open_names)]
                text_index = (worker * 3 + step) % len(TEXTS)
                started = time.monotonic()
                try:
                    chunks = client.completions.create(
                        model=name,
                        prompt=TEXTS[text_index],
                        max_tokens=TOKENS,
                        temperature=0,
                        stream=True,
                    )
                    text = "".join(c.choices[0].text for c in chunks if c.choices)
                except Exception as exc:  # every failure is collected and fails the test
                    failures.append((name, repr(exc)))
                    return
                answers.append((name, text_index, text, started))
                step += 1

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            workers = [pool.submit(stream_requests, w) for w in range(8)]
            time.sleep(1.0)
            (tmp_path / "new.tmp").write_bytes((tmp_path / "new.v1").read_bytes())
            os.replace(tmp_path / "new.tmp", folder / "new.safetensors")
            wait_for(lambda: "new" in listed(server))
            open_names.add("new")
            time.sleep(1.0)
            before = listed(server)["swap"]["loaded_at"]
            (tmp_path / "swap.tmp").write_bytes((tmp_path / "swap.v2").read_bytes())
            os.replace(tmp_path / "swap.tmp", folder / "swap.safetensors")
            wait_for(lambda: listed(server)["swap"]["loaded_at"] != before)
            swapped_at = time.monotonic()
            time.sleep(1.0)
            open_names.discard("keep")
            time.sleep(0.5)  # requests already sent to "keep" finish before it goes
            (folder / "keep.safetensors").unlink()
            wait_for(lambda: "keep" not in listed(server))
            time.sleep(1.0)
            stop.set()
            for worker in workers:
                worker.result()
        gone = httpx2.post(
            server.url + "/v1/completions", json={"model": "keep", "prompt": "x", "max_tokens": 1}
        )

    assert failures == []
    assert gone.status_code == 404
    seen = {name for name, *_ in answers}
    assert seen == {"keep", "swap", "new"}, seen
    for name, text_index, text, started in answers:
        if name == "swap":
            allowed = [expected[("swap", v)][text_index] for v in ("v1", "v2")]
            if started > swapped_at:
                allowed = [expected[("swap", "v2")][text_index]]
            assert text in allowed, (name, text_index, text)
        else:
            assert text == expected[(name, "v1")][text_index], (name, text_index, text)
    assert any(name == "swap" and started > swapped_at for name, _, _, started in answers)


def test_max_loaded_keeps_the_most_recently_used(backbone, tmp_path):
    folder = tmp_path / "adapters"
    folder.mkdir()
    for i in range(3):
        write_prompt(backbone, folder / f"p{i}.safetensors", i)
    with Server(adapters_dir=folder, model=backbone, port=0, max_loaded=2) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
        assert not any(listed(server)[f"p{i}"]["loaded"] for i in range(3))
        for name in ("p0", "p1", "p2", "p0"):
            reply = client.completions.create(
                model=name, prompt="it was", max_tokens=3, temperature=0
            )
            path = folder / f"{name}.safetensors"
            assert reply.choices[0].text == alone(backbone, path, "it was", tokens=3)
        loaded = {name for name, row in listed(server).items() if row["loaded"]}
    assert loaded == {server.base_name, "p2", "p0"}


def test_misfits_and_links_out_of_the_folder_are_refused_with_a_reason(backbone, tmp_path):
    folder = tmp_path / "adapters"
    folder.mkdir()
    write_prompt(backbone, folder / "good.safetensors", 1)
    write_prompt(backbone, folder / "wide.safetensors", 2, width=backbone.hidden_size + 8)
    write_prompt(backbone, tmp_path / "outside.safetensors", 3)
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with Server(adapters_dir=folder, model=backbone, port=0) as server:
        rows = listed(server)
        reply = httpx2.post(
            server.url + "/v1/completions", json={"model": "wide", "prompt": "x", "max_tokens": 1}
        )
        ok = httpx2.post(
            server.url + "/v1/completions", json={"model": "good", "prompt": "x", "max_tokens": 1}
        )
    assert "error" not in rows["good"] and ok.status_code == 200
    assert str(backbone.hidden_size + 8) in rows["wide"]["error"]
    assert "outside" in rows["link"]["error"]
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "model_refused"
    assert all("\n" not in line for line in server.refused) and len(server.refused) == 2


def test_two_replicas_on_one_folder_both_serve_an_adapter_added_once(backbone, tmp_path):
    folder = tmp_path / "shared-adapters"
    folder.mkdir()
    with (
        Server(adapters_dir=folder, model=backbone, port=0, watch_interval=0.1) as first,
        Server(adapters_dir=folder, model=backbone, port=0, watch_interval=0.1) as second,
    ):
        assert first.port != second.port
        write_prompt(backbone, tmp_path / "added.tmp", 5)
        os.replace(tmp_path / "added.tmp", folder / "added.safetensors")
        wait_for(lambda: "added" in listed(first) and "added" in listed(second))
        texts = [
            httpx2.post(
                server.url + "/v1/completions",
                json={"model": "added", "prompt": "it was", "max_tokens": TOKENS, "temperature": 0},
            ).json()["choices"][0]["text"]
            for server in (first, second)
        ]
    assert texts[0] == texts[1] == alone(backbone, folder / "added.safetensors", "it was")
