"""A PEFT adapter folder in the served --adapters folder replaced again and again (by
`export --force`, i.e. `files.atomic_folder`) while clients send requests: no request fails,
none gets a 404, and each answer is one version's, whole."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx2
import torch

from softprompt.generation import SamplingOptions, generate
from softprompt.interop.peft import export_peft
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt, load_prompt
from softprompt.serving.server import Server

TEXT, TOKENS, REPLACEMENTS = "it was good", 3, 40
WATCHER = """
import os, sys, threading
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
looks = absent = 0
while not done.is_set():
    looks += 1
    absent += not os.path.isfile(sys.argv[1])
print(looks, absent)
"""


def test_a_served_adapter_folder_replaced_under_requests_never_fails(tiny_dirs, tmp_path):
    from softprompt.models import load_backbone

    backbone = load_backbone(str(tiny_dirs["llama"]))
    versions, expected = [], set()
    for seed in (1, 2):
        embedding = torch.randn(
            3, backbone.hidden_size, generator=torch.Generator().manual_seed(seed)
        )
        path = tmp_path / f"v{seed}.safetensors"
        SoftPrompt(embedding, models=[model_record(backbone)]).save(path)
        versions.append(path)
        steering = load_prompt(path).steering_for(backbone)
        options = SamplingOptions(max_new_tokens=TOKENS, greedy=True)
        expected.add(generate(backbone, [TEXT], steering, options)[0])
    assert len(expected) == 2  # the two versions answer differently
    folder = tmp_path / "adapters"
    folder.mkdir()
    export_peft(versions[0], backbone, folder / "ad")
    answers, failures, stop = [], [], threading.Event()
    # another process (no shared GIL) looks at the folder as often as it can meanwhile
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(folder / "ad" / "adapter_config.json")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    with Server(adapters_dir=folder, model=backbone, port=0, watch_interval=0.01) as server:

        def ask() -> None:
            body = {"model": "ad", "prompt": TEXT, "max_tokens": TOKENS, "temperature": 0}
            while not stop.is_set():
                reply = httpx2.post(server.url + "/v1/completions", json=body, timeout=30)
                if reply.status_code != 200:
                    failures.append((reply.status_code, reply.text))
                    return
                answers.append(reply.json()["choices"][0]["text"])

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for thread in threads:
            thread.start()
        for round_ in range(REPLACEMENTS):
            export_peft(versions[(round_ + 1) % 2], backbone, folder / "ad", overwrite=True)
            time.sleep(0.02)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        looks, absent = map(int, watcher.communicate("stop\n", timeout=30)[0].split())
    assert failures == []
    assert looks > 1000 and absent == 0, (looks, absent)
    assert len(answers) >= 10 and set(answers) <= expected, set(answers)
    assert sorted(p.name for p in folder.iterdir()) == ["ad"]  # no old copy left behind
