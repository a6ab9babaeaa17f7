"""The Python API example script runs end to end (on a tiny model, 2 steps)."""

import json
import subprocess
import sys

from conftest import ROOT
from softprompt.methods.prompt import load_prompt


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
