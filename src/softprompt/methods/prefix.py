"""Prefix tuning (Li & Liang): learned keys/values in front of every attention layer of one
causal LM, trained through an MLP reparameterisation; the artifact keeps only the resulting
keys/values (`prefix.keys` / `prefix.values`, [layers, kv_heads, L, head_dim])."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from softprompt.errors import PromptFileError
from softprompt.files import write_safetensors_atomic
from softprompt.methods.artifact import header_metadata, read_artifact
from softprompt.methods.base import Method, MethodSettings, TrainableModule
from softprompt.models import Backbone
from softprompt.steering.base import Steering
from softprompt.steering.prefix import PrefixKV, prefix_geometry, text_prefix


class PrefixSettings(MethodSettings):
    """The prefix's length, start and reparameterisation."""

    init: str = "random"
    reparameterization: Literal["mlp", "none"] = "mlp"
    mlp_hidden: int = Field(512, ge=1)

    @field_validator("init")
    @classmethod
    def _known_start(cls, value: str) -> str:
        if value not in ("random", "text"):
            raise ValueError("a prefix starts from init 'random' or 'text'")
        return value

    @model_validator(mode="after")
    def _text_given(self) -> PrefixSettings:
        if self.init == "text" and not self.text:
            raise ValueError("prompt.init 'text' needs prompt.text (the text to start from)")
        return self

    def check_run(self, models: list[str]) -> None:
        if len(models) > 1:
            raise ValueError("method 'prefix' trains on one model; list a single model")


class PrefixEncoder(TrainableModule):
    """The trainable prefix. `mlp`: Embedding(L, h) -> Linear(h, h) -> tanh -> Linear(h,
    layers x 2 x kv_dim), added to a fixed starting point (zeros, or a text's real keys/values)
    with the last layer zero-initialised when starting from a text; `none`: the keys/values
    themselves. Only the resulting keys/values are saved."""

    def __init__(
        self,
        geometry: tuple[int, int, int],
        length: int,
        *,
        reparameterization: str = "mlp",
        hidden: int = 512,
        start: PrefixKV | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.geometry, self.length = geometry, length
        self.reparameterization = reparameterization
        with torch.random.fork_rng(devices=[]):  # its own start; the global RNG is left as is
            torch.manual_seed(seed)
            self._build(start, hidden)

    def _build(self, start: PrefixKV | None, hidden: int) -> None:
        layers, kv_heads, head_dim = self.geometry
        reparameterization = self.reparameterization
        shape = (layers, kv_heads, self.length, head_dim)
        if start is None:
            start = PrefixKV(torch.zeros(shape), torch.zeros(shape))
            if reparameterization == "none":
                start = PrefixKV(torch.randn(shape), torch.randn(shape))
        if reparameterization == "none":
            self.keys = nn.Parameter(start.keys.float().clone())
            self.values = nn.Parameter(start.values.float().clone())
            return
        self.register_buffer("start", torch.stack([start.keys, start.values]).float())
        out = 2 * layers * kv_heads * head_dim
        self.embedding = nn.Embedding(self.length, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out))
        if start.keys.abs().sum() > 0:
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self) -> PrefixKV:
        if self.reparameterization == "none":
            return PrefixKV(self.keys, self.values)
        layers, kv_heads, head_dim = self.geometry
        flat = self.mlp(self.embedding.weight)  # [L, 2 * layers * kv * hd]
        kv = flat.view(self.length, 2, layers, kv_heads, head_dim).permute(1, 2, 3, 0, 4)
        kv = kv + self.start
        return PrefixKV(kv[0], kv[1])

    def steering(self, model_index: int) -> Steering:
        return self()

    def artifact(self, header: dict, backbones: list[Backbone]) -> SavedPrefix:
        """The final keys/values (no MLP)."""
        with torch.no_grad():
            kv = self()
        return SavedPrefix(kv=PrefixKV(kv.keys.detach().cpu(), kv.values.detach().cpu()), **header)


@dataclass
class SavedPrefix:
    """A prefix artifact: final keys/values (no MLP) plus the same header metadata as prompts."""

    kv: PrefixKV
    models: list[dict] = field(default_factory=list)
    task: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    method: str = "prefix"

    @property
    def length(self) -> int:
        return self.kv.length

    def check_fits(self, model: nn.Module, model_name: str, source: str = "prefix") -> None:
        expected = prefix_geometry(model)
        layers, kv_heads, _, head_dim = self.kv.keys.shape
        if (layers, kv_heads, head_dim) != expected:
            raise PromptFileError(
                f"{source} has {layers} layers x {kv_heads} key-value heads x head dim "
                f"{head_dim}, but model {model_name} has {expected[0]} x {expected[1]} x "
                f"{expected[2]}; use a prefix trained for this model"
            )
        config = model.config.get_text_config(decoder=True)
        context = getattr(config, "max_position_embeddings", None)
        if context is not None and self.length >= context:
            raise PromptFileError(
                f"{source} is {self.length} positions long, but model {model_name} takes at "
                f"most {context} in all; compose fewer or shorter cartridges or prefixes"
            )

    def steering_for(self, backbone: Backbone, source: str = "prefix") -> Steering:
        self.check_fits(backbone.model, backbone.name, source=source)
        return self.kv

    def save(self, path) -> Path:
        return save_prefix(self, path)


def save_prefix(prefix: SavedPrefix, path) -> Path:
    """Write the prefix artifact atomically: final keys/values and the shared header."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "prefix.keys": prefix.kv.keys.detach().float().cpu().contiguous(),
        "prefix.values": prefix.kv.values.detach().float().cpu().contiguous(),
    }
    write_safetensors_atomic(tensors, header_metadata(prefix), target)
    return target


def load_prefix(path, method: str = "prefix") -> SavedPrefix:
    """Read and validate a prefix artifact (`method`: the header's, e.g. "cartridge", whose
    file is a prefix file too)."""
    tensors, fields = read_artifact(path, method, "prefix" if method == "prefix" else method)
    keys, values = tensors.get("prefix.keys"), tensors.get("prefix.values")
    if keys is None or values is None:
        raise PromptFileError(f"{path} has no 'prefix.keys'/'prefix.values' tensors")
    if keys.ndim != 4 or keys.shape != values.shape:
        raise PromptFileError(
            f"{path}: prefix keys/values must be [layers, kv_heads, L, head_dim] tensors of one "
            f"shape, got {list(keys.shape)} and {list(values.shape)}"
        )
    if not (torch.isfinite(keys).all() and torch.isfinite(values).all()):
        raise PromptFileError(f"{path}: the prefix holds NaN or infinite values")
    return SavedPrefix(kv=PrefixKV(keys.float(), values.float()), method=method, **fields)


class PrefixMethod(Method):
    """Prefix tuning on one causal LM."""

    name = "prefix"
    what = "prefix"
    settings = PrefixSettings

    def build_module(self, settings, backbones, cross_model) -> PrefixEncoder:
        backbone = backbones[0]
        start = None
        if settings.init == "text":
            ids = backbone.tokenizer(settings.text, return_tensors="pt").input_ids
            ids = ids[:, : settings.length]
            start = PrefixKV(*text_prefix(backbone.model, ids.to(backbone.device)))
        length = start.length if start is not None else settings.length
        return PrefixEncoder(
            prefix_geometry(backbone.model),
            length,
            reparameterization=settings.reparameterization,
            hidden=settings.mlp_hidden,
            start=start,
            seed=settings.seed,
        )

    def load(self, path) -> SavedPrefix:
        return load_prefix(path)
