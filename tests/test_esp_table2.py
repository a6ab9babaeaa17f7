"""Table 2 of the Token Splitting Effect paper, recomputed from the three prompts released with
it (tests/fixtures/esp) by running the commands of docs/token-splitting-table2.md as written."""

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from softprompt.analysis.similarity import inner_complexity, similarity_matrices
from softprompt.interop.esp import read_esp_tensor
from softprompt.methods.prompt import load_prompt
from test_cli import invoke

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "token-splitting-table2.md"
FIXTURES = ROOT / "tests" / "fixtures" / "esp"
RUNS = ("imdb_1_model_0", "imdb_1_model_1", "imdb_2_model_0")
# Table 2 as printed; the README released with the prompts gives 12.671 for seed 1 (a user
# report said 12.672: the doc explains why 12.671 is the rounding of the prompt's value)
PAPER = {
    "cosine_mean_prompt[0][1]": 0.012,
    "cosine_mean_prompt[0][2]": 0.636,
    "euclidean_all_pairs[0][0]": 12.836,
    "euclidean_all_pairs[1][1]": 12.671,
    "euclidean_all_pairs[2][2]": 11.751,
}


def documented_commands() -> list[str]:
    """The non-empty lines of the doc's bash blocks, in order: the commands it documents."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def documented_table() -> dict[str, tuple[str, str]]:
    """The doc's table: JSON entry -> (our number, the paper's number), as printed."""
    rows = re.findall(r"^\|[^|]+\| `([a-z_]+\[\d\]\[\d\])` \| ([\d.]+) \| ([\d.]+) \|$",
                      DOC.read_text(encoding="utf-8"), flags=re.M)  # fmt: skip
    return {key: (ours, paper) for key, ours, paper in rows}


def run_documented(monkeypatch, capsys, line: str):
    """One documented line through the CLI: leading VAR=value words set the environment."""
    words = shlex.split(line)
    while "=" in words[0]:
        name, value = words.pop(0).split("=", 1)
        monkeypatch.setenv(name, value)
    assert words[0] == "softprompt", line
    return invoke(monkeypatch, capsys, *words[1:])


def entry(metrics: dict, key: str) -> float:
    name, i, j = re.fullmatch(r"([a-z_]+)\[(\d)\]\[(\d)\]", key).groups()
    return metrics[name][int(i)][int(j)]


def test_the_documented_commands_give_table_2(monkeypatch, capsys, tmp_path):
    (tmp_path / "tests").symlink_to(ROOT / "tests")  # the doc's paths, outputs kept in tmp
    monkeypatch.chdir(tmp_path)
    commands = documented_commands()
    assert len(commands) == 5 and commands[0].startswith("softprompt compare tests/fixtures")
    results = []
    for line in commands:
        code, out, err = run_documented(monkeypatch, capsys, line)
        assert code == 0, f"{line}\n{err}"
        assert "Traceback" not in err
        results.append((line, out, err))

    metrics = json.loads(results[0][1])["metrics"]
    table = documented_table()
    assert sorted(table) == sorted(PAPER)
    for key, paper in PAPER.items():
        value = entry(metrics, key)
        assert round(value, 3) == paper, (key, value)
        assert table[key] == (f"{value:.5f}", f"{paper:.3f}"), key
    assert json.loads(results[0][1])["labels"] == list(RUNS)

    for line, _, err in results[1:4]:  # the imports: the hub is offline, so a warning per model
        warnings = err.strip().splitlines()
        assert len(warnings) == line.count(" -m ") and all(
            w.startswith("warning:") and "not checked" in w for w in warnings
        ), err
    joint = load_prompt(tmp_path / "runs" / "esp" / "joint.safetensors")
    assert joint.models == [
        {"name": "google/multiberts-seed_0", "hidden_size": 768},
        {"name": "google/multiberts-seed_1", "hidden_size": 768},
    ]
    assert json.loads(results[4][1])["metrics"] == metrics  # the imported artifacts: the same


def test_inner_complexity_does_not_depend_on_the_prompts_beside_it():
    """Each prompt's euclidean all-pairs with itself, compared among the three (48 tokens), is
    its inner complexity alone and the float64 value, to float32 precision."""
    prompts = [read_esp_tensor(FIXTURES / f"{run}.pt") for run in RUNS]
    together = similarity_matrices(prompts)["euclidean_all_pairs"]
    for i, prompt in enumerate(prompts):
        exact = float(torch.cdist(prompt.double(), prompt.double()).mean())
        assert together[i][i] == pytest.approx(exact, abs=2e-5)
        assert inner_complexity(prompt) == pytest.approx(exact, abs=2e-5)
