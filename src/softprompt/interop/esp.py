"""Import soft prompts saved by the explainable-soft-prompts research code (`torch.save` of a
state dict `{"weight": [L, d]}` or of a bare [L, d] tensor).

The file is read with `torch.load(weights_only=True)`: plain tensors only, never code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from softprompt.errors import PromptFileError
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt
from softprompt.models.backbone import Backbone

STATE_DICT_KEYS = ("weight", "prompt", "embedding.weight", "soft_prompt.weight")


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


def import_esp(path: str | Path, backbones: list[Backbone]) -> SoftPrompt:
    """A softprompt artifact from a research-code file, for the models the user names."""
    embedding = read_esp_tensor(path)
    prompt = SoftPrompt(
        embedding=embedding,
        models=[model_record(b) for b in backbones],
        init={"init": "file", "file": str(path), "imported_from": "esp"},
    )
    for backbone in backbones:
        prompt.check_fits(backbone.hidden_size, backbone.name, source=str(path))
    return prompt
