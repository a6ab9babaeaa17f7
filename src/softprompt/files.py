"""safetensors files as softprompt writes and reads them: atomically written (never half a
file), read with one clear error for anything that is not a readable safetensors file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from softprompt.errors import PromptFileError


def write_safetensors_atomic(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], target: Path
) -> None:
    """Write a safetensors file atomically (temp file, fsync, rename): never half-written."""
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
