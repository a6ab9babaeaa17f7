"""Prompt tuning: a learned [L, d] matrix of virtual-token embeddings in front of the input.

Here live its config section, its initialisations, the trainable module (with the maps into
models of other hidden sizes for joint training across architectures) and its artifact: ONE
`.safetensors` file with the tensor `prompt` (and `view.<i>` per mapped model) and the header.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from softprompt.alignment.cache import load_alignment
from softprompt.errors import PromptFileError, UsageError
from softprompt.files import write_safetensors_atomic
from softprompt.methods.artifact import header_metadata, read_artifact
from softprompt.methods.base import Method, MethodSettings, TrainableModule
from softprompt.models import Backbone
from softprompt.steering.base import Steering
from softprompt.steering.prompt import PromptSteering

INIT_MODES = ("random", "text", "vocab", "file")


class PromptSettings(MethodSettings):
    """The soft prompt's size and initialisation."""

    init: Literal["random", "text", "vocab", "file"] = "random"
    file: str | None = None
    length: int = Field(16, ge=1, le=4096)

    @property
    def input_length(self) -> int:
        return self.length


@dataclass
class SoftPrompt:
    """A soft prompt: `embedding` [L, d] plus what the artifact header says about it."""

    embedding: torch.Tensor
    models: list[dict] = field(default_factory=list)
    task: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    method: str = "prompt"
    # cross-architecture prompts: model name -> the prompt as that model takes it [L, d_model]
    views: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.embedding.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.embedding.shape[1])

    def metadata(self) -> dict[str, str]:
        return header_metadata(self)

    def check_fits(self, hidden_size: int, model_name: str, source: str = "prompt") -> None:
        """Raise a clear error when this prompt was made for another hidden size."""
        if self.hidden_size != hidden_size:
            trained = ", ".join(m.get("name", "?") for m in self.models) or "unknown models"
            raise PromptFileError(
                f"{source} has hidden size {self.hidden_size} (trained on {trained}) but model "
                f"{model_name} has hidden size {hidden_size}; use a prompt made for this model "
                "or map it there with `softprompt transfer`"
            )

    def embedding_for(self, hidden_size: int, model_name: str, source: str = "prompt"):
        """The prompt as a model takes it: that model's view in a cross-architecture prompt,
        else the prompt itself (which must then have the model's hidden size)."""
        view = self.views.get(model_name)
        if view is not None and view.shape[1] == hidden_size:
            return view
        self.check_fits(hidden_size, model_name, source)
        return self.embedding

    def steering_for(self, backbone: Backbone, source: str = "prompt") -> Steering:
        return PromptSteering(self.embedding_for(backbone.hidden_size, backbone.name, source))

    def save(self, path: str | os.PathLike) -> Path:
        return save_prompt(self, path)


def init_embedding(
    length: int,
    backbone,
    init: str = "random",
    *,
    seed: int = 0,
    text: str | None = None,
    file: str | None = None,
) -> torch.Tensor:
    """A fresh [length, d] float32 prompt, initialised as the paper and its follow-ups do.

    random: normal with the std of the model's embedding entries (own seed);
    text: the embeddings of a text's tokens, cut or repeated to `length`;
    vocab: embedding rows sampled from the vocabulary; file: rows of an existing prompt.
    """
    if length < 1:
        raise UsageError(f"prompt length must be at least 1, got {length}")
    table = backbone.embedding_table()
    generator = torch.Generator().manual_seed(seed)
    if init == "random":
        return torch.randn(length, table.shape[1], generator=generator) * table.std()
    if init == "vocab":
        rows = torch.randint(0, table.shape[0], (length,), generator=generator)
        return table[rows].clone()
    if init == "text":
        if not text:
            raise UsageError("prompt.init 'text' needs prompt.text (the text to start from)")
        ids = backbone.tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            raise UsageError(f"prompt.text {text!r} has no tokens")
        repeated = (ids * (length // len(ids) + 1))[:length]
        return table[torch.tensor(repeated)].clone()
    if init == "file":
        if not file:
            raise UsageError("prompt.init 'file' needs prompt.file (a .safetensors prompt)")
        source = load_prompt(file)
        source.check_fits(table.shape[1], backbone.name, source=file)
        repeated = source.embedding.repeat(length // source.length + 1, 1)
        return repeated[:length].float().clone()
    raise UsageError(f"unknown prompt init {init!r}; use one of {', '.join(INIT_MODES)}")


def initial_embedding(settings: PromptSettings, backbone) -> torch.Tensor:
    """The [L, d] start a config's `prompt:` section asks for (`init_embedding`)."""
    return init_embedding(
        settings.length,
        backbone,
        settings.init,
        seed=settings.seed,
        text=settings.text,
        file=settings.file,
    )


def save_prompt(prompt: SoftPrompt, path: str | os.PathLike) -> Path:
    """Write the artifact atomically (temp file, fsync, rename): never a half-written file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"prompt": prompt.embedding.detach().float().cpu().contiguous()}
    names = [str(m.get("name")) for m in prompt.models]
    for name, view in prompt.views.items():
        tensors[f"view.{names.index(name)}"] = view.detach().float().cpu().contiguous()
    write_safetensors_atomic(tensors, prompt.metadata(), target)
    return target


def load_prompt(path: str | os.PathLike) -> SoftPrompt:
    """Read and validate a prompt artifact; metadata is parsed, never trusted blindly."""
    tensors, fields = read_artifact(path, "prompt", "soft prompt")
    if "prompt" not in tensors:
        raise PromptFileError(
            f"{path} has no 'prompt' tensor (it holds {_some_names(tensors)}), so it is not a "
            "softprompt prompt; give a prompt written by softprompt train, or bring one in with "
            "softprompt import"
        )
    embedding = tensors["prompt"]
    if embedding.ndim != 2 or embedding.shape[0] < 1 or not embedding.is_floating_point():
        raise PromptFileError(
            f"{path}: 'prompt' must be a float [length, hidden] matrix, got "
            f"{embedding.dtype} {list(embedding.shape)}"
        )
    if not torch.isfinite(embedding).all():
        raise PromptFileError(f"{path}: 'prompt' holds NaN or infinite values")
    views = _read_views(path, tensors, fields["models"], embedding.shape[0])
    return SoftPrompt(embedding=embedding.float(), views=views, **fields)


def _some_names(tensors: dict, shown: int = 3) -> str:
    """The first few tensor names of a file (a model's weights file has hundreds)."""
    names = list(tensors)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (", ".join(names[:shown]) or "no tensors") + more


def _read_views(path, tensors: dict, models: list[dict], length: int) -> dict[str, torch.Tensor]:
    """The per-model views of a cross-architecture prompt (`view.<model index>` tensors)."""
    views = {}
    for key, view in tensors.items():
        if not key.startswith("view."):
            continue
        index = key.removeprefix("view.")
        if not index.isdigit() or int(index) >= len(models):
            raise PromptFileError(f"{path}: tensor {key!r} names no model of the header")
        if view.ndim != 2 or view.shape[0] != length or not torch.isfinite(view).all():
            raise PromptFileError(f"{path}: {key!r} must be a finite [{length}, hidden] matrix")
        views[str(models[int(index)].get("name"))] = view.float()
    return views


class LinearMap(torch.nn.Module):
    """x @ weight + bias: from the prompt's space into one model's; learned or fixed."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, learned: bool) -> None:
        super().__init__()
        if learned:
            self.weight = torch.nn.Parameter(weight.clone())
            self.bias = torch.nn.Parameter(bias.clone())
        else:
            self.register_buffer("weight", weight.clone())
            self.register_buffer("bias", bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class SoftPromptModule(TrainableModule):
    """The trainable [L, d] soft prompt; with models of other hidden sizes, also the map into
    each one's space (`maps[i]` is None for a model that takes the prompt as it is)."""

    def __init__(self, embedding: torch.Tensor, maps: list[LinearMap | None] | None = None) -> None:
        super().__init__()
        self.embedding = torch.nn.Parameter(embedding)
        self.maps = torch.nn.ModuleList([m or torch.nn.Identity() for m in maps or []])

    def forward(self) -> torch.Tensor:
        return self.embedding

    def view(self, model_index: int, prompt: torch.Tensor) -> torch.Tensor:
        """The prompt as model `model_index` takes it."""
        if model_index >= len(self.maps):
            return prompt
        return self.maps[model_index](prompt)

    def mapped_models(self) -> list[int]:
        return [i for i, m in enumerate(self.maps) if isinstance(m, LinearMap)]

    def steering(self, model_index: int) -> Steering:
        return PromptSteering(self.view(model_index, self.embedding))

    def artifact(self, header: dict, backbones: list[Backbone]) -> SoftPrompt:
        with torch.no_grad():
            views = {
                backbones[i].name: self.view(i, self.embedding).float().cpu()
                for i in self.mapped_models()
            }
        return SoftPrompt(embedding=self.embedding.detach().float().cpu(), views=views, **header)


def cross_model_maps(backbones: list[Backbone], cross_model) -> list[LinearMap | None]:
    """A map from the first model's embedding space into each model of another hidden size,
    fitted on the shared vocabulary (cached on disk, see softprompt.alignment)."""
    first = backbones[0]
    if all(b.hidden_size == first.hidden_size for b in backbones):
        return []
    maps: list[LinearMap | None] = []
    for backbone in backbones:
        if backbone.hidden_size == first.hidden_size:
            maps.append(None)
            continue
        fitted = load_alignment(first, backbone, cross_model.alignment)
        maps.append(LinearMap(fitted.weight, fitted.bias, cross_model.maps == "learned"))
    return maps


class PromptMethod(Method):
    """Prompt tuning (Lester et al.): one or several models, sharing one prompt."""

    name = "prompt"
    what = "soft prompt"
    settings = PromptSettings

    def build_module(self, settings, backbones, cross_model) -> SoftPromptModule:
        embedding = initial_embedding(settings, backbones[0])
        return SoftPromptModule(embedding, cross_model_maps(backbones, cross_model))

    def load(self, path) -> SoftPrompt:
        return load_prompt(path)
