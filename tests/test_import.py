import json
import pickle

import pytest
import torch

from softprompt.artifacts import open_prompt
from softprompt.errors import PromptFileError
from softprompt.interop.esp import import_esp, read_esp_tensor
from softprompt.methods.prompt import load_prompt, save_prompt
from test_cli import assert_one_line_error, invoke

TASK = (
    "--template",
    "review: {text} sentiment:",
    "--verbalizer",
    '{"negative": " bad", "positive": " good"}',
)


def test_both_research_layouts_import(tiny, tmp_path):
    weight = torch.randn(5, 32)
    torch.save({"weight": weight}, tmp_path / "state.pt")
    torch.save(weight, tmp_path / "bare.pt")
    for name in ("state.pt", "bare.pt"):
        prompt = import_esp(tmp_path / name, [tiny["llama"]])
        assert torch.equal(prompt.embedding, weight)
        assert prompt.models[0]["name"] == tiny["llama"].name
        save_prompt(prompt, tmp_path / f"{name}.safetensors")
        assert torch.equal(load_prompt(tmp_path / f"{name}.safetensors").embedding, weight)


class Payload:
    def __reduce__(self):
        return (print, ("this code must never run",))


def test_a_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"weight": Payload()}, handle)
    with pytest.raises(PromptFileError, match="refused"):
        read_esp_tensor(path)
    assert "must never run" not in capsys.readouterr().out


def test_wrong_contents_and_sizes(tiny, tmp_path):
    torch.save({"bias": torch.zeros(3)}, tmp_path / "a.pt")
    with pytest.raises(PromptFileError, match=r"no prompt weight .*found: bias"):
        read_esp_tensor(tmp_path / "a.pt")
    torch.save(torch.zeros(3), tmp_path / "b.pt")
    with pytest.raises(PromptFileError, match=r"float \[length, hidden\] matrix"):
        read_esp_tensor(tmp_path / "b.pt")
    torch.save(torch.zeros(3, 48), tmp_path / "c.pt")
    with pytest.raises(PromptFileError, match="hidden size 48"):
        import_esp(tmp_path / "c.pt", [tiny["llama"]])
    (tmp_path / "d.pt").write_bytes(b"garbage")
    with pytest.raises(PromptFileError, match="not a readable torch file|refused"):
        read_esp_tensor(tmp_path / "d.pt")


def test_a_pickle_with_code_is_refused_by_compare_and_explain(monkeypatch, capsys, tmp_path):
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"weight": Payload()}, handle)
    torch.save({"weight": torch.zeros(2, 8)}, tmp_path / "good.pt")
    for args in (("compare", path, tmp_path / "good.pt"), ("explain", path, "-m", "x")):
        code, out, err = invoke(monkeypatch, capsys, *args)
        assert_one_line_error(code, err, 1, "was refused")
        assert "must never run" not in out + err


def test_esp_import_records_an_unloadable_model_as_given(monkeypatch, capsys, tmp_path, tiny_dirs):
    """Offline, a hub id cannot be loaded: it is recorded by name with the file's width and a
    one-line warning; a model that loads beside it is recorded in full and its fit checked."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weight = torch.randn(5, 32)
    torch.save({"weight": weight}, tmp_path / "p.pt")
    target = tmp_path / "p.safetensors"
    args = ("import", tmp_path / "p.pt", "--from", "esp", "--out", target, "--json")
    code, out, err = invoke(
        monkeypatch, capsys, *args, "-m", "google/multiberts-seed_0", "-m", tiny_dirs["llama"]
    )
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:"), err
    assert "'google/multiberts-seed_0'" in lines[0] and "hub is offline" in lines[0]
    assert "hidden size 32" in lines[0] and "not checked" in lines[0]
    assert json.loads(out) == {
        "path": str(target),
        "method": "prompt",
        "length": 5,
        "hidden_size": 32,
    }
    prompt = load_prompt(target)
    assert torch.equal(prompt.embedding, weight)
    assert prompt.models[0] == {"name": "google/multiberts-seed_0", "hidden_size": 32}
    assert prompt.models[1]["name"] == str(tiny_dirs["llama"]) and prompt.models[1]["kind"]

    code, _, err = invoke(monkeypatch, capsys, *args, "-m", "./nowhere/model")
    assert code == 0 and "model path not found: ./nowhere/model" in err, err
    torch.save(torch.zeros(3, 48), tmp_path / "wide.pt")  # a model that loads: fit checked
    code, _, err = invoke(
        monkeypatch, capsys, "import", tmp_path / "wide.pt", "--from", "esp", "--out", target,
        "-m", "google/multiberts-seed_0", "-m", tiny_dirs["llama"],
    )  # fmt: skip
    assert "warning:" in err
    assert_one_line_error(code, err.split("\n", 1)[1], 1, "has hidden size 48")
    (tmp_path / "bad.pt").write_bytes(b"garbage")  # a bad file fails before any warning
    code, _, err = invoke(
        monkeypatch, capsys, "import", tmp_path / "bad.pt", "--from", "esp", "--out", target,
        "-m", "google/multiberts-seed_0",
    )  # fmt: skip
    assert_one_line_error(code, err, 1, "bad.pt")


def test_compare_and_explain_read_research_files(
    monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir
):
    weight = torch.randn(4, 32, generator=torch.Generator().manual_seed(3))
    torch.save({"weight": weight}, tmp_path / "a.pt")
    artifact = tmp_path / "a.safetensors"
    code, _, err = invoke(
        monkeypatch, capsys, "import", tmp_path / "a.pt", "--from", "esp",
        "-m", tiny_dirs["llama"], "--out", artifact,
    )  # fmt: skip
    assert code == 0 and not err.strip(), err
    assert torch.equal(open_prompt(tmp_path / "a.pt").embedding, weight)
    code, out, err = invoke(monkeypatch, capsys, "compare", tmp_path / "a.pt", artifact, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["labels"] == ["a.pt", "a.safetensors"]  # equal stems: the suffix tells
    assert result["metrics"]["euclidean_pairwise"][0][1] == 0.0
    assert result["metrics"]["cosine_mean_prompt"][0][1] == pytest.approx(1.0)

    explained = []
    for path in (tmp_path / "a.pt", artifact):
        code, out, err = invoke(
            monkeypatch, capsys, "explain", path, "-m", tiny_dirs["llama"], "--data",
            sentiment_dir, "--split", "dev", "--max-examples", "8", *TASK,
            "--projection", "none", "--out", tmp_path / f"{path.suffix[1:]}-report", "--json",
        )  # fmt: skip
        assert code == 0, err
        explained.append(json.loads(out))
    assert explained[0]["tokens"] == explained[1]["tokens"]
    assert explained[0]["models"][0]["importance"] == explained[1]["models"][0]["importance"]
    assert (tmp_path / "pt-report" / "report.html").is_file()

    code, _, err = invoke(monkeypatch, capsys, "explain", tmp_path / "a.pt", "--data", "x")
    assert_one_line_error(code, err, 2, "records no model; name the model(s)")
    torch.save({"weight": torch.zeros(4, 48)}, tmp_path / "wide.pt")
    code, _, err = invoke(monkeypatch, capsys, "compare", tmp_path / "a.pt", tmp_path / "wide.pt")
    assert_one_line_error(code, err, 2, f"different hidden sizes cannot be compared ({tmp_path}")
