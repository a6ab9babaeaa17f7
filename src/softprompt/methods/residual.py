"""Residual prompt tuning (Razdaibiedina et al. 2023): every prompt row goes through one
shallow bottleneck MLP with a skip connection, `P + LN(up(ReLU(down(P))))`, the MLP shared by
the rows; the paper reports better accuracy and less sensitivity to the learning rate and the
prompt length than plain prompt tuning.

As for p-tuning (softprompt.methods.p_tuning): the checkpoint keeps the MLP, the artifact is
the plain soft prompt it outputs, and joint training across hidden sizes shares the one MLP in
the first model's space.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from softprompt.methods.p_tuning import EncodedPromptMethod
from softprompt.methods.prompt import PromptSettings


class ResidualSettings(PromptSettings):
    """The plain prompt's keys and the bottleneck MLP's."""

    bottleneck: int = Field(128, ge=1, le=65536)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    layer_norm: bool = True
    # the MLP's learning rate as a multiple of train.lr (sentiment-residual.yaml cut to 40
    # steps on SmolLM2: dev 0.80 at 1, 0.95 at 0.1; BENCHMARKS.md, issue #39)
    encoder_lr_scale: float = Field(0.1, gt=0)


class ResidualEncoder(nn.Module):
    """x + LN(up(dropout(ReLU(down(x))))), row by row (LayerNorm optional)."""

    def __init__(self, width: int, bottleneck: int, dropout: float, layer_norm: bool) -> None:
        super().__init__()
        layers = [nn.Linear(width, bottleneck), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(bottleneck, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        self.mlp = nn.Sequential(*layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs + self.mlp(inputs)


class ResidualMethod(EncodedPromptMethod):
    """Residual prompt tuning: the soft prompt through a residual bottleneck MLP; saved as the
    plain prompt."""

    name = "residual"
    what = "soft prompt (residual)"
    settings = ResidualSettings

    def encoder(self, settings, width: int) -> nn.Module:
        return ResidualEncoder(width, settings.bottleneck, settings.dropout, settings.layer_norm)
