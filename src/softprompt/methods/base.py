"""What a method is: its config section, its trainable module, its artifact.

Like PEFT's tuners (`peft/tuners/<method>/` plus `register_peft_method`), each method is one
module that defines these three and one registry line in `softprompt.methods`; the trainer,
evaluation and the CLI only talk to them through this interface.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from softprompt.models import Backbone
from softprompt.steering.base import Steering


class MethodSettings(BaseModel):
    """The `prompt:` section of a training config; each method adds its own keys and checks."""

    model_config = ConfigDict(extra="forbid")

    length: int = Field(16, ge=1, le=4096)
    seed: int = 0
    text: str | None = None

    @property
    def input_length(self) -> int:
        """Input positions the method takes in front of every text (tasks leave room)."""
        return 0

    def check_run(self, models: list[str]) -> None:
        """Method-specific checks of the whole run (raise ValueError with the reason)."""

    def link_task(self, task) -> None:
        """Take what the method needs from the run's validated `task:` section (a cartridge
        starts from the task's document); by default nothing."""


class Artifact(Protocol):
    """A trained (or imported) prompt or prefix with its header fields."""

    method: str
    models: list[dict]
    task: dict
    init: dict
    training: dict

    @property
    def length(self) -> int: ...

    def steering_for(self, backbone: Backbone, source: str = "prompt") -> Steering:
        """The steering for `backbone`, after checking the artifact fits it (else a clear
        PromptFileError naming `source`)."""
        ...

    def save(self, path: str | os.PathLike) -> Path: ...


class TrainableModule(torch.nn.Module):
    """The parameters a method trains; only these get gradients."""

    def steering(self, model_index: int) -> Steering:
        """What model `model_index` of the run is steered with now."""
        raise NotImplementedError

    def artifact(self, header: dict, backbones: list[Backbone]) -> Artifact:
        """What gets saved (detached, on the CPU), with the given header fields."""
        raise NotImplementedError

    def lr_scales(self) -> dict[str, float]:
        """{parameter-name prefix: multiple of train.lr} for the kinds of parameter that train
        at a rate of their own (an encoder); the rest train at train.lr."""
        return {}


class Method(ABC):
    """One steering method: how it is configured, trained and stored."""

    name: str  # the config's `method:` value and the artifact header's
    what: str  # how messages name it ("soft prompt", "prefix")
    settings: type[MethodSettings]

    @abstractmethod
    def build_module(
        self, settings: MethodSettings, backbones: list[Backbone], cross_model
    ) -> TrainableModule:
        """A freshly initialised trainable module for the run's models."""

    @abstractmethod
    def load(self, path: str | os.PathLike) -> Artifact:
        """Read and validate an artifact file of this method."""


def trained_model(artifact: Artifact | None) -> str | None:
    """The model an artifact was trained on (the first it names), or None: the one rule by which
    every command and the server pick a prompt's default base model."""
    name = artifact.models[0].get("name") if artifact is not None and artifact.models else None
    return str(name) if name else None
