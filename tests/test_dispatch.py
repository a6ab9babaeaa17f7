"""`--device-map auto`: a model spread by accelerate's dispatch, with a memory budget that
forces offload (on this CPU-only machine past the CPU budget: to disk), gives the numbers and
text of the model in one piece."""

import json

import pytest
import torch

from softprompt.errors import UsageError
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt
from softprompt.models import load_backbone
from softprompt.models.dispatch import parse_max_memory
from test_cli import invoke
from test_session import TASK

BUDGET = "cpu=150KB"  # the tiny Llama is ~660 KB: its decoder layers go to disk


@pytest.fixture()
def prompt_file(tiny, tmp_path):
    backbone = tiny["llama"]
    embedding = torch.randn(4, backbone.hidden_size, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "prompt.safetensors"
    SoftPrompt(embedding, models=[model_record(backbone)], task=TASK).save(path)
    return path


def test_a_budget_offloads_the_layers_and_keeps_the_embeddings_and_head_whole(tiny_dirs):
    backbone = load_backbone(
        str(tiny_dirs["llama"]), device_map="auto", max_memory=parse_max_memory(BUDGET)
    )
    places = backbone.model.hf_device_map
    assert places["model.layers.0"] == "disk" and places["model.layers.1"] == "disk"
    assert places["model.embed_tokens"] == places["lm_head"] == "cpu"
    assert backbone.model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    assert backbone.model.lm_head.weight.device.type == "cpu"


@pytest.mark.parametrize("verb", ["evaluate", "generate", "predict"])
def test_dispatched_model_gives_the_same_numbers_and_text(
    verb, tiny_dirs, prompt_file, sentiment_dir, monkeypatch, capsys
):
    args = {
        "evaluate": ["--data", sentiment_dir, "--split", "dev"],
        "generate": ["--text", "the movie was", "--greedy", "--max-new-tokens", "8"],
        "predict": ["--text", "it was good", "--text", "awful"],
    }[verb]
    common = [verb, prompt_file, "--model", tiny_dirs["llama"], *args, "--json"]
    whole = invoke(monkeypatch, capsys, *common, "--device", "cpu")
    spread = invoke(monkeypatch, capsys, *common, "--device-map", "auto", "--max-memory", BUDGET)
    assert whole[0] == spread[0] == 0, spread[2]
    expected, got = json.loads(whole[1]), json.loads(spread[1])
    assert same(got, expected)
    if verb == "evaluate":
        assert got["examples"] > 0 and 0 <= got["accuracy"] <= 1
    if verb == "generate":
        assert got[0]["with_prompt"].strip()  # text came out, the same word for word


def same(got, expected) -> bool:
    """Equal structure and strings, numbers to 1e-5 (relative)."""
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(same(got[k], expected[k]) for k in expected)
    if isinstance(expected, list):
        return len(got) == len(expected) and all(map(same, got, expected))
    if isinstance(expected, float):
        return got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    return got == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0=70GiB,cpu=100GiB", {0: "70GiB", "cpu": "100GiB"}), ("2GB", {"cpu": "2GB"}), (None, None)],
)
def test_max_memory_reads_device_size_pairs(text, expected):
    assert parse_max_memory(text) == expected


@pytest.mark.parametrize("text", ["gpu0=1GiB", "0=lots", "cpu=1GiB,=x"])
def test_an_unreadable_max_memory_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--max-memory: cannot read"):
        parse_max_memory(text)


def test_max_memory_without_device_map_is_refused(tiny_dirs, prompt_file, monkeypatch, capsys):
    code, _, err = invoke(
        monkeypatch, capsys, "predict", prompt_file, "--text", "x", "--max-memory", "1GiB"
    )
    assert code != 0 and "--max-memory goes with --device-map auto" in err


def test_serve_with_a_device_map_says_why_not_yet(monkeypatch, capsys):
    code, _, err = invoke(monkeypatch, capsys, "serve", "--device-map", "auto")
    assert code == 2 and "serve --device-map: not yet" in err
    assert "one block pool on one device" in err and "Traceback" not in err
