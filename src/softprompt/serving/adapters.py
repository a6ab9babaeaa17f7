"""The adapters a server offers: every soft prompt or prefix given, each served under its file
or folder stem, beside the bare base model, each as a `Session` on the served model. Names are
looked up in memory only: a request's model name never reaches the file system."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from softprompt.artifacts import open_artifact
from softprompt.errors import SoftpromptError
from softprompt.interop.peft import CONFIG_FILE
from softprompt.methods.base import Artifact
from softprompt.models.backbone import Backbone
from softprompt.session import Session
from softprompt.steering.base import Steering

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class Adapter:
    """One served model name and its session (the prompt on the served model; none: bare)."""

    name: str
    session: Session
    source: str = ""

    @property
    def steering(self) -> Steering:
        return self.session.steering

    @property
    def artifact(self) -> Artifact | None:
        return self.session.artifact

    @property
    def method(self) -> str:
        return self.artifact.method if self.artifact is not None else "none"


def artifact_sources(paths: list[str | Path], folder: str | Path | None) -> list[Path]:
    """The artifact files given, then every `.safetensors` file and PEFT adapter folder
    (one holding adapter_config.json) in `folder`, sorted by name."""
    sources = [Path(p) for p in paths]
    if folder is not None:
        root = Path(folder)
        if not root.is_dir():
            raise SoftpromptError(f"--adapters {root}: not a folder")
        for entry in sorted(root.iterdir()):
            is_peft = entry.is_dir() and (entry / CONFIG_FILE).is_file()
            if (entry.suffix == ".safetensors" and entry.is_file()) or is_peft:
                sources.append(entry)
    return sources


def trained_on(source: Path) -> str | None:
    """The first model an artifact file or PEFT folder names (the default base model)."""
    models = open_artifact(source).models
    return str(models[0].get("name")) if models and models[0].get("name") else None


def load_adapters(
    sources: list[Path], backbone: Backbone, base_name: str
) -> tuple[dict[str, Adapter], list[str]]:
    """The adapters that fit `backbone` by name (the base model first, under `base_name`), and
    one line for every source that was refused, saying why."""
    adapters = {base_name: Adapter(base_name, Session(None, backbone))}
    refused = []
    for source in sources:
        name = source.stem if source.is_file() else source.name
        try:
            adapter = _load_one(source, name, backbone)
        except SoftpromptError as exc:
            refused.append(f"{source}: {exc}")
            continue
        if name in adapters:
            refused.append(f"{source}: the name {name!r} is already served; rename the file")
            continue
        adapters[name] = adapter
    return adapters, refused


def _load_one(source: Path, name: str, backbone: Backbone) -> Adapter:
    if not NAME.match(name):
        raise SoftpromptError(
            f"{name!r} is not a usable model name (letters, digits, '.', '_', '-'); rename it"
        )
    return Adapter(name, Session(source, backbone).load(), str(source))
