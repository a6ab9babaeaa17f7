"""The artifact file every method writes: ONE `.safetensors` file whose header says what it
holds (format, version, method) and what it was made for (models, task, init, training), so a
file describes itself. Shared by every method; `softprompt.methods` dispatches on `method`."""

from __future__ import annotations

import json
import os

import torch

from softprompt.errors import PromptFileError
from softprompt.files import read_safetensors

FORMAT_NAME = "softprompt"
FORMAT_VERSION = "1"
JSON_FIELDS = ("models", "task", "init", "training")


def header_method(path: str | os.PathLike) -> str:
    """The method an artifact's header names ("prompt" for files that predate the field)."""
    return read_safetensors(path)[1].get("method", "prompt")


def header_metadata(artifact) -> dict[str, str]:
    """The safetensors header of a prompt or prefix artifact: format, version, method and the
    JSON fields (models, task, init, training)."""
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "method": artifact.method}
    for key in JSON_FIELDS:
        meta[key] = json.dumps(getattr(artifact, key), sort_keys=True)
    return meta


def read_artifact(
    path: str | os.PathLike, method: str, what: str
) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and validated header fields of an artifact that must hold `method` (`what`
    names it for the error when the file holds another)."""
    tensors, meta = read_safetensors(path)
    if meta.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise PromptFileError(
            f"{path} is a {meta['format']!r} file (model weights, say), not a softprompt "
            "artifact; give a prompt or prefix file written by softprompt"
        )
    version = meta.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise PromptFileError(
            f"{path} has format version {version}; this softprompt reads version {FORMAT_VERSION}"
        )
    found = meta.get("method", "prompt")
    if found != method:
        raise PromptFileError(f"{path} holds a {found!r}, not a {what}")
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


def parse_json_field(meta: dict[str, str], key: str, path) -> object:
    """One JSON header field, checked to be of its expected type (list or object)."""
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
