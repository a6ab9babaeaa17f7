"""The one way to open what a user names as a prompt: a softprompt `.safetensors` artifact (any
registered method's), a PEFT adapter folder, a run folder (its best prompt), the research code's
`.pt` file (read with `weights_only=True`), an artifact already in memory, or nothing (the bare
model)."""

from __future__ import annotations

import os
from pathlib import Path

from softprompt.errors import UsageError
from softprompt.interop.esp import is_esp_file, read_esp_prompt
from softprompt.interop.peft import CONFIG_FILE, peft_artifact
from softprompt.methods import load_artifact
from softprompt.methods.base import Artifact
from softprompt.methods.cartridge import compose
from softprompt.methods.prompt import SoftPrompt, load_prompt

RUN_PROMPT = "prompt.safetensors"  # what a run folder holds as its best artifact

ArtifactSource = str | os.PathLike | Artifact | None


def open_artifact(source: ArtifactSource) -> Artifact | None:
    """The artifact `source` names (read and validated), the one given, or None for None."""
    if source is None or not isinstance(source, (str, os.PathLike)):
        return source
    path = Path(source)
    if not path.exists() and "+" in str(source):
        return open_composed(str(source))
    if is_esp_file(path):
        return open_prompt(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return peft_artifact(path)
    return load_artifact(_in_run_folder(path))


def open_composed(source: str) -> Artifact:
    """`A+B+...`: the prefixes or cartridges named, concatenated along their positions
    (softprompt.methods.cartridge.compose)."""
    names = [part for part in source.split("+")]
    if any(not name for name in names):
        raise UsageError(f"{source}: an empty name in the composition; write A+B")
    return compose([open_artifact(name) for name in names], names)


def open_prompt(source: str | os.PathLike) -> SoftPrompt:
    """A soft prompt, for the analyses that read its matrix (`compare`, `explain`): a
    softprompt prompt artifact (or a run folder's) or a research-code `.pt` file, which records
    no model or task."""
    path = Path(source)
    if is_esp_file(path):
        return read_esp_prompt(path)
    return load_prompt(_in_run_folder(path))


def source_name(source: ArtifactSource) -> str | None:
    """How messages and JSON name the source: its path as given, None for nothing."""
    if source is None:
        return None
    return str(source) if isinstance(source, (str, os.PathLike)) else "prompt"


def _in_run_folder(path: Path) -> Path:
    """A run folder's best prompt file; any other path as it is."""
    if path.is_dir() and (path / RUN_PROMPT).is_file():
        return path / RUN_PROMPT
    return path
