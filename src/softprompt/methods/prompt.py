"""Soft prompts: the learned [L, d] matrix, its initialisation, and its one-file artifact.

An artifact is ONE `.safetensors` file: the tensor `prompt` and string metadata in the header
(method, format version, models, task, init, training summary) so that a prompt file says by
itself what it was trained for.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from softprompt.errors import PromptFileError, UsageError

FORMAT_NAME = "softprompt"
FORMAT_VERSION = "1"
INIT_MODES = ("random", "text", "vocab", "file")
JSON_FIELDS = ("models", "task", "init", "training")


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


def header_metadata(artifact) -> dict[str, str]:
    """The safetensors header of a prompt or prefix artifact: format, version, method and the
    JSON fields (models, task, init, training)."""
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "method": artifact.method}
    for key in JSON_FIELDS:
        meta[key] = json.dumps(getattr(artifact, key), sort_keys=True)
    return meta


METHOD_NAMES = {"prompt": "soft prompt", "prefix": "prefix"}


def read_artifact(path: str | os.PathLike, method: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and validated header fields of an artifact that must hold `method`."""
    tensors, meta = read_safetensors(path)
    if meta.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise PromptFileError(f"{path} is a {meta['format']!r} file, not a softprompt artifact")
    version = meta.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise PromptFileError(
            f"{path} has format version {version}; this softprompt reads version {FORMAT_VERSION}"
        )
    found = meta.get("method", "prompt")
    if found != method:
        raise PromptFileError(f"{path} holds a {found!r}, not a {METHOD_NAMES[method]}")
    fields = {key: parse_json_field(meta, key, path) for key in JSON_FIELDS}
    if not all(isinstance(m, dict) for m in fields["models"]):
        raise PromptFileError(f"{path}: metadata 'models' must be a list of objects")
    return tensors, fields


def model_record(backbone) -> dict:
    """What a prompt header records about one model it was trained or made for."""
    return {
        "name": backbone.name,
        "hidden_size": backbone.hidden_size,
        "tokenizer": backbone.tokenizer_name,
        "model_type": getattr(backbone.model.config, "model_type", ""),
        "kind": backbone.kind,
    }


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


def write_safetensors_atomic(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], target: Path
) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, with clear errors for bad files."""
    from safetensors import safe_open

    source = Path(path)
    if not source.is_file():
        raise PromptFileError(f"prompt file not found: {source}")
    try:
        tensors = load_file(source)
        with safe_open(source, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PromptFileError(
            f"{source} is not a readable safetensors file ({str(exc).splitlines()[0]})"
        ) from exc
    return tensors, metadata


def load_prompt(path: str | os.PathLike) -> SoftPrompt:
    """Read and validate a prompt artifact; metadata is parsed, never trusted blindly."""
    tensors, fields = read_artifact(path, "prompt")
    if "prompt" not in tensors:
        raise PromptFileError(f"{path} has no 'prompt' tensor (found: {', '.join(tensors)})")
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


def parse_json_field(meta: dict[str, str], key: str, path) -> object:
    default = [] if key == "models" else {}
    if key not in meta:
        return default
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"{path}: metadata {key!r} is not valid JSON") from exc
    if not isinstance(value, type(default)):
        raise PromptFileError(f"{path}: metadata {key!r} must be a {type(default).__name__}")
    return value
