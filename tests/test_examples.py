"""The Python API example script runs end to end (on a tiny model, 2 steps)."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from softprompt.config import load_config
from softprompt.methods.prompt import load_prompt
from softprompt.study import load_study
from test_cli import invoke


def test_python_api_example_runs_every_cell(tiny_dirs, tmp_path):
    out = tmp_path / "api"
    script = ROOT / "examples" / "python_api.py"
    done = subprocess.run(
        [sys.executable, script, "--model", tiny_dirs["llama"], "--steps", "2", "--out", out],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert load_prompt(out / "prompt-4.safetensors").length == 4
    assert (out / "explain" / "report.html").is_file()
    assert (
        json.loads((out / "peft-adapter" / "adapter_config.json").read_text())["peft_type"]
        == "PROMPT_TUNING"
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("PEFT round trip"))
    matrix = json.loads(line.split(":", 1)[1])
    assert abs(matrix[0][1] - 1.0) < 1e-6  # the imported prompt is the exported one


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples/configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_every_example_config_validates(path):
    raw = yaml.safe_load(path.read_text())
    if "model_sets" in raw:  # a study's grid over a training config
        assert load_study(path).config
    else:
        assert load_config(path).method == raw.get("method", "prompt")


def test_train_help_lists_every_registered_method(monkeypatch, capsys):
    from softprompt.methods import METHODS

    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = invoke(monkeypatch, capsys, "train", "--help")
    assert code == 0
    assert [name for name in METHODS if name not in out] == []
