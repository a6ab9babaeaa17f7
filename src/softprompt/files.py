"""Files as softprompt writes and reads them: safetensors and text outputs atomically written
(never half a file), safetensors read with one clear error for anything that is not readable."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from softprompt.errors import PromptFileError


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` to write; when the block ends without an error it is
    fsynced and renamed over `target` (never half a file), else removed and `target` is left
    as it was. The file gets the mode a plain `open()` would give under the umask, not the
    0600 that mkstemp leaves."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `target` to fill; when the block ends without an error it
    is renamed into place, replacing an existing `target` only once the new one is complete,
    else removed. Made by mkdtemp (a unique name) but with the mode `mkdir` would give under
    the umask (0755 under 022), not mkdtemp's 0700."""
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
        if not target.exists():
            staging.rename(target)
            return
        aside = target.parent / f".{target.name}-old-{uuid.uuid4().hex[:8]}"
        target.rename(aside)
        staging.rename(target)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_safetensors_atomic(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], target: Path
) -> None:
    """Write a safetensors file atomically (see `atomic_file`)."""
    with atomic_file(target) as temporary:
        save_file(tensors, temporary, metadata=metadata)


@contextmanager
def atomic_text_file(target: Path) -> Iterator[TextIO]:
    """A UTF-8 text file that appears at `target` only once the block ends without an error
    (see `atomic_file`)."""
    with (
        atomic_file(target) as temporary,
        temporary.open("w", encoding="utf-8", newline="\n") as handle,
    ):
        yield handle
        handle.flush()


def _umask() -> int:
    """The process's umask (os.umask only reads it by setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, with clear errors for bad files."""
    source = Path(path)
    if source.is_dir():
        raise PromptFileError(folder_given(source))
    if not source.is_file():
        raise PromptFileError(f"prompt file not found: {source}")
    if source.stat().st_size == 0:
        raise PromptFileError(
            f"{source} is empty (0 bytes); save or copy the prompt file again (a run writes "
            "RUN/prompt.safetensors)"
        )
    try:
        tensors = load_file(source)
        with safe_open(source, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PromptFileError(
            f"{source} is not a readable safetensors file ({str(exc).splitlines()[0]})"
        ) from exc
    return tensors, metadata


def folder_given(folder: Path) -> str:
    """What to say when a folder is given where a prompt file is expected: a PEFT adapter is
    imported first, a run folder holds its prompt file, any other folder is simply not one."""
    if (folder / "adapter_config.json").is_file():
        return (
            f"{folder} is a PEFT adapter folder, not a prompt file; bring it in with "
            f"softprompt import {folder} --from peft --out NEW.safetensors and use that file"
        )
    if (folder / "prompt.safetensors").is_file():
        return f"{folder} is a run folder; give its prompt file, {folder / 'prompt.safetensors'}"
    return f"{folder} is a folder, not a prompt file; give the prompt's .safetensors file"
