"""Import soft prompts saved by the explainable-soft-prompts research code (`torch.save` of a
state dict `{"weight": [L, d]}` or of a bare [L, d] tensor), and read them where softprompt
reads its own prompts (`compare`, `explain`).

The file is read with `torch.load(weights_only=True)`: plain tensors only, never code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from softprompt.errors import PromptFileError
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt
from softprompt.models import Backbone

STATE_DICT_KEYS = ("weight", "prompt", "embedding.weight", "soft_prompt.weight")
ESP_SUFFIXES = (".pt", ".pth")  # what torch.save files are called; anything else is an artifact


def read_esp_tensor(path: str | Path) -> torch.Tensor:
    """The [L, d] prompt matrix in a research-code `.pt` file, safely unpickled."""
    source = Path(path)
    if not source.is_file():
        raise PromptFileError(f"prompt file not found: {source}")
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PromptFileError(
            f"{source} holds more than plain tensors (code or custom objects) and was refused; "
            "only tensors and state dicts can be imported"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise PromptFileError(f"{source} is not a readable torch file ({exc})") from exc
    if isinstance(obj, dict):
        key = next((k for k in STATE_DICT_KEYS if k in obj), None)
        if key is None:
            found = ", ".join(map(str, obj)) or "nothing"
            raise PromptFileError(f"{source}: no prompt weight in the state dict (found: {found})")
        obj = obj[key]
    if not isinstance(obj, torch.Tensor) or obj.ndim != 2 or not obj.is_floating_point():
        shape = list(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise PromptFileError(f"{source}: expected a float [length, hidden] matrix, got {shape}")
    if not torch.isfinite(obj).all():
        raise PromptFileError(f"{source}: the prompt holds NaN or infinite values")
    return obj.detach().float().contiguous()


def import_esp(path: str | Path, models: list[Backbone | str]) -> SoftPrompt:
    """A softprompt artifact from a research-code file, for the models the user names.

    A loaded `Backbone` is recorded in full and the prompt must fit it (its hidden size). A
    bare model name (a model that could not be loaded here, e.g. a hub id while offline) is
    recorded as given with the file's hidden size: comparing released prompts needs no model,
    and the fit is checked later by whatever loads the model (evaluate, explain).
    """
    embedding = read_esp_tensor(path)
    prompt = SoftPrompt(
        embedding=embedding,
        models=[_record(m, int(embedding.shape[1])) for m in models],
        init=_esp_init(path),
    )
    for model in models:
        if not isinstance(model, str):
            prompt.check_fits(model.hidden_size, model.name, source=str(path))
    return prompt


def is_esp_file(path: str | Path) -> bool:
    """Whether a prompt path names a research-code torch file (by its suffix)."""
    return Path(path).suffix.lower() in ESP_SUFFIXES


def read_esp_prompt(path: str | Path) -> SoftPrompt:
    """A research-code `.pt` file as a soft prompt in memory (it records no model or task)."""
    return SoftPrompt(embedding=read_esp_tensor(path), init=_esp_init(path))


def _record(model: Backbone | str, hidden_size: int) -> dict:
    """The header's record of one model: in full when loaded, else its name and the width."""
    if isinstance(model, str):
        return {"name": model, "hidden_size": hidden_size}
    return model_record(model)


def _esp_init(path: str | Path) -> dict:
    return {"init": "file", "file": str(path), "imported_from": "esp"}
