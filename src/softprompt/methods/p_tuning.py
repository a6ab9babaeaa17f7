"""P-tuning (Liu et al. 2021, PEFT's `P_TUNING`): the prompt is the output of a small encoder
(an MLP, or a bidirectional LSTM and an MLP) over learned input embeddings, which makes the
prompt's rows share parameters while they train.

Training keeps the encoder (the checkpoint holds it, so `--resume` is exact); the artifact is
the plain soft prompt it outputs, with the method and its settings in the header's `init`, so
every command that takes a prompt takes it as it is. Joint training on models of different
hidden sizes shares the one encoder: its output lives in the first model's space and the
cross-model maps carry it to the others, as for a plain prompt.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from softprompt.methods.prompt import (
    PromptMethod,
    PromptSettings,
    SoftPrompt,
    SoftPromptModule,
    cross_model_maps,
    initial_embedding,
)
from softprompt.steering.prompt import PromptSteering


class PTuningSettings(PromptSettings):
    """The plain prompt's keys (its `init` starts the encoder's inputs) and the encoder's."""

    encoder: Literal["mlp", "lstm"] = "mlp"
    encoder_hidden_size: int = Field(128, ge=1, le=65536)
    # the encoder's learning rate as a multiple of train.lr: an MLP at the prompt's 0.01-0.02
    # stalls at chance within 40 steps on SmolLM2 (dev 0.61 at 1, 0.89 at 0.1; BENCHMARKS.md,
    # issue #39)
    encoder_lr_scale: float = Field(0.1, gt=0)


class PromptEncoder(nn.Module):
    """PEFT's `PromptEncoder` shapes: MLP d→h→h→d with ReLUs, or a 2-layer bidirectional
    LSTM over the inputs followed by an MLP 2h→2h→d."""

    def __init__(self, width: int, hidden: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "lstm":
            self.lstm = nn.LSTM(width, hidden, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Sequential(
                nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, width)
            )
        else:
            self.head = nn.Sequential(
                nn.Linear(width, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, width),
            )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.kind == "lstm":
            inputs = self.lstm(inputs.unsqueeze(0))[0].squeeze(0)
        return self.head(inputs)


class EncodedPromptModule(SoftPromptModule):
    """A soft prompt computed as `encoder(inputs)`; the learned inputs sit where a plain prompt
    keeps its matrix (`embedding`), so the cross-model maps and the artifact work the same."""

    def __init__(
        self, inputs: torch.Tensor, encoder: nn.Module, maps, method: str, lr_scale: float = 1.0
    ) -> None:
        super().__init__(inputs, maps)
        self.encoder = encoder
        self.method = method
        self.lr_scale = lr_scale

    def lr_scales(self) -> dict[str, float]:
        """The encoder trains at `lr_scale` times train.lr (its section's encoder_lr_scale)."""
        return {"encoder.": self.lr_scale}

    def prompt(self) -> torch.Tensor:
        """The prompt the encoder makes of the learned inputs."""
        return self.encoder(self.embedding)

    def steering(self, model_index: int) -> PromptSteering:
        return PromptSteering(self.view(model_index, self.prompt()))

    def artifact(self, header: dict, backbones) -> SoftPrompt:
        """The plain soft prompt the encoder outputs (dropout off), its method in `init`."""
        training = self.training
        self.eval()
        try:
            with torch.no_grad():
                prompt = self.prompt().float()
                views = {
                    backbones[i].name: self.view(i, prompt).float().cpu()
                    for i in self.mapped_models()
                }
        finally:
            self.train(training)
        header = {**header, "init": {**header.get("init", {}), "method": self.method}}
        return SoftPrompt(embedding=prompt.cpu(), views=views, **header)


class EncodedPromptMethod(PromptMethod):
    """A soft prompt trained through an encoder and saved as the plain prompt it outputs;
    subclasses say which encoder (`encoder`)."""

    def encoder(self, settings, width: int) -> nn.Module:
        raise NotImplementedError

    def build_module(self, settings, backbones, cross_model) -> EncodedPromptModule:
        inputs = initial_embedding(settings, backbones[0])
        with torch.random.fork_rng(devices=[]):  # the encoder's own start, same every run
            torch.manual_seed(settings.seed)
            encoder = self.encoder(settings, inputs.shape[1])
        maps = cross_model_maps(backbones, cross_model)
        return EncodedPromptModule(
            inputs, encoder, maps, self.name, lr_scale=settings.encoder_lr_scale
        )


class PTuningMethod(EncodedPromptMethod):
    """P-tuning: the soft prompt as an MLP's or LSTM's output; saved as the plain prompt."""

    name = "p_tuning"
    what = "soft prompt (p-tuning)"
    settings = PTuningSettings

    def encoder(self, settings, width: int) -> nn.Module:
        return PromptEncoder(width, settings.encoder_hidden_size, settings.encoder)
