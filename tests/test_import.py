import pickle

import pytest
import torch

from softprompt.errors import PromptFileError
from softprompt.interop.esp import import_esp, read_esp_tensor
from softprompt.methods.prompt import load_prompt, save_prompt


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
