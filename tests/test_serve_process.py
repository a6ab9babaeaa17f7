"""`softprompt serve` as users run it: a separate process on loopback that stops cleanly on
SIGTERM, finishing the request in flight, and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx2
import torch

from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            if httpx2.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not come up")


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tiny, tiny_dirs, tmp_path):
    backbone = tiny["llama"]
    prompt = SoftPrompt(torch.randn(3, backbone.hidden_size), models=[model_record(backbone)])
    prompt.save(tmp_path / "three.safetensors")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "softprompt.cli",
        "serve",
        str(tmp_path / "three.safetensors"),
        "--port",
        str(port),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process)
        body = {
            "model": "three",
            "prompt": "it was",
            "max_tokens": 120,
            "temperature": 0,
            "stream": True,
        }
        lines = []
        with httpx2.stream("POST", url + "/v1/completions", json=body, timeout=60) as reply:
            for line in reply.iter_lines():
                if line and not lines:
                    process.send_signal(signal.SIGTERM)  # while the request decodes
                lines.append(line)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    events = [json.loads(x.removeprefix("data: ")) for x in lines if x and x != "data: [DONE]"]
    assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"
    assert events[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert process.returncode == 0
