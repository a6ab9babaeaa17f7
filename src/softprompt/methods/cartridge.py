"""Cartridges (Eyuboglu et al. 2025): a prefix that stands in for a document. Its keys/values
are the trained parameters themselves (no MLP), they start as the frozen model's own keys/values
of real text (the document's first tokens by default, or random tokens of the vocabulary), and
the first `frozen` positions are never trained (the attention sink the paper keeps fixed).

Trained by self-study (`task: self_study`); the artifact is the usual prefix file (tensors
`prefix.keys` / `prefix.values`) with method "cartridge" in its header, so everything that uses a
prefix uses a cartridge. Cartridges compose by concatenating their positions (`compose`).

A method of its own rather than a `prefix` setting: it starts from the task's document, freezes
positions and has its own PEFT form (CARTRIDGE, with `num_frozen_tokens`); as prefix settings
these would be three keys that mean nothing for the MLP prefix.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from softprompt.errors import ConfigError, PromptFileError, UsageError
from softprompt.methods.base import Method, MethodSettings, TrainableModule
from softprompt.methods.prefix import SavedPrefix, load_prefix
from softprompt.models import Backbone
from softprompt.steering.base import Steering
from softprompt.steering.prefix import PrefixKV, text_prefix
from softprompt.text.corpus import read_corpus


class CartridgeSettings(MethodSettings):
    """`prompt:` keys of a cartridge: its length, where it starts, how many positions stay."""

    length: int = Field(256, ge=1, le=4096)
    init: Literal["document", "random", "text"] = "document"
    document: str | list[str] | None = None  # what it starts from; default: the task's data
    frozen: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> CartridgeSettings:
        if self.frozen > self.length:
            raise ValueError(f"frozen ({self.frozen}) is more than the length ({self.length})")
        if self.init == "text" and not self.text:
            raise ValueError("prompt.init 'text' needs prompt.text (the text to start from)")
        return self

    def check_run(self, models: list[str]) -> None:
        if len(models) > 1:
            raise ValueError("method 'cartridge' trains on one model; list a single model")

    def link_task(self, task) -> None:
        if self.document is None and self.init == "document":
            self.document = getattr(task, "data", None) or None


class CartridgeModule(TrainableModule):
    """The cartridge's keys/values: the first `frozen` positions a buffer, the rest parameters."""

    def __init__(self, start: PrefixKV, frozen: int) -> None:
        super().__init__()
        keys, values = start.keys.detach().float(), start.values.detach().float()
        self.frozen = frozen
        self.register_buffer("frozen_keys", keys[:, :, :frozen].clone())
        self.register_buffer("frozen_values", values[:, :, :frozen].clone())
        self.keys = nn.Parameter(keys[:, :, frozen:].clone())
        self.values = nn.Parameter(values[:, :, frozen:].clone())

    def forward(self) -> PrefixKV:
        return PrefixKV(
            torch.cat([self.frozen_keys, self.keys], dim=2),
            torch.cat([self.frozen_values, self.values], dim=2),
        )

    def steering(self, model_index: int) -> Steering:
        return self()

    def artifact(self, header: dict, backbones: list[Backbone]) -> SavedPrefix:
        with torch.no_grad():
            kv = self()
        kv = PrefixKV(kv.keys.detach().cpu(), kv.values.detach().cpu())
        return SavedPrefix(kv=kv, **{**header, "method": "cartridge"})


def start_ids(settings: CartridgeSettings, backbone: Backbone) -> torch.Tensor:
    """The token ids whose keys/values a cartridge starts from ([1, length])."""
    tokenizer, length = backbone.tokenizer, settings.length
    if settings.init == "random":
        generator = torch.Generator().manual_seed(settings.seed)
        vocab = backbone.model.get_input_embeddings().num_embeddings
        return torch.randint(0, min(vocab, len(tokenizer)), (1, length), generator=generator)
    if settings.init == "text":
        text, where = settings.text or "", "prompt.text"
    else:
        if not settings.document:
            raise ConfigError("prompt.init 'document' needs prompt.document or task.data")
        text = "\n\n".join(doc.text for doc in read_corpus(settings.document))
        docs = settings.document
        where = docs if isinstance(docs, str) else ", ".join(docs)
    ids = tokenizer(text, return_tensors="pt").input_ids
    if ids.shape[1] < length:
        raise ConfigError(
            f"{where} has {ids.shape[1]} tokens, fewer than the cartridge's {length} positions; "
            "lower prompt.length (a cartridge longer than its text saves nothing)"
        )
    return ids[:, :length]


def compose(artifacts: list, names: list[str]) -> SavedPrefix:
    """Several prefixes or cartridges as one: their positions concatenated in the order given
    (as the paper and PEFT compose cartridges). They must share one model geometry; whether the
    sum fits a model's context is checked when it is put on one (`SavedPrefix.check_fits`)."""
    if len(artifacts) < 2:
        raise UsageError("a composition names at least two cartridges, e.g. doc-a+doc-b")
    for artifact, name in zip(artifacts, names):
        if getattr(artifact, "kv", None) is None:  # prefixes and cartridges hold keys/values
            what = getattr(artifact, "method", None) or "bare model"
            raise UsageError(f"{name} is a {what}; only prefixes and cartridges compose")
    shapes = [a.kv.keys.shape for a in artifacts]
    for shape, name in zip(shapes[1:], names[1:]):
        if (shape[0], shape[1], shape[3]) != (shapes[0][0], shapes[0][1], shapes[0][3]):
            raise PromptFileError(
                f"{name} is for a model of {shape[0]} layers x {shape[1]} key-value heads x "
                f"{shape[3]}, {names[0]} for {shapes[0][0]} x {shapes[0][1]} x {shapes[0][3]}; "
                "compose cartridges of one model"
            )
    kv = PrefixKV(
        torch.cat([a.kv.keys for a in artifacts], dim=2),
        torch.cat([a.kv.values for a in artifacts], dim=2),
    )
    method = "cartridge" if all(a.method == "cartridge" for a in artifacts) else "prefix"
    init = {"composed": names, "lengths": [a.length for a in artifacts]}
    return SavedPrefix(kv=kv, models=artifacts[0].models, init=init, method=method)


class CartridgeMethod(Method):
    """A cartridge on one causal LM."""

    name = "cartridge"
    what = "cartridge"
    settings = CartridgeSettings

    def build_module(self, settings, backbones, cross_model) -> CartridgeModule:
        backbone = backbones[0]
        ids = start_ids(settings, backbone).to(backbone.device)
        start = PrefixKV(*text_prefix(backbone.model, ids))
        return CartridgeModule(start, settings.frozen)

    def load(self, path) -> SavedPrefix:
        return load_prefix(path, "cartridge")
