"""Prefix injection (Li & Liang): per-layer key/value prefixes of L positions, sized by the
model's key-value heads, given to the model as a pre-filled cache of the installed transformers.

Positions agree between training and generation because both see the prefix as L cached
positions (the text starts at position L). For training, the cache layers are made
non-mutating, so gradient checkpointing can recompute a layer without the cache growing.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from softprompt.errors import PromptFileError


def prefix_geometry(model: nn.Module) -> tuple[int, int, int]:
    """(layers, key-value heads, head dim) of a decoder model's attention."""
    config = model.config.get_text_config(decoder=True)
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return int(layers), int(kv_heads), int(head_dim)


def _non_mutating_update(layer, key_states, value_states, *args, **kwargs):
    """Return prefix + new states without storing the new states (bound to a cache layer)."""
    return (
        torch.cat([layer.keys, key_states], dim=-2),
        torch.cat([layer.values, value_states], dim=-2),
    )


def prefix_cache(
    model: nn.Module,
    keys: torch.Tensor,
    values: torch.Tensor,
    batch_size: int,
    *,
    frozen: bool = False,
):
    """A DynamicCache holding the prefix ([layers, kv_heads, L, head_dim] each) for a batch,
    or one prefix per row ([layers, batch, kv_heads, L, head_dim]).

    `frozen=True` (training): every forward sees exactly the prefix, however often a layer runs.
    `frozen=False` (generation): the cache grows with the generated tokens as usual.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    dtype = model.get_input_embeddings().weight.dtype
    per_row = keys.ndim == 5
    for index, layer in enumerate(cache.layers):
        shape = (batch_size, *keys.shape[-3:])
        layer_keys, layer_values = keys[index].to(dtype), values[index].to(dtype)
        if not per_row:
            layer_keys, layer_values = layer_keys.expand(shape), layer_values.expand(shape)
            if not frozen:  # generation grows each row's cache: give every row its own copy
                layer_keys, layer_values = layer_keys.contiguous(), layer_values.contiguous()
        layer.update(layer_keys, layer_values)
        if frozen:
            layer.update = types.MethodType(_non_mutating_update, layer)
    return cache


def keep_cache_when_checkpointing(model: nn.Module) -> None:
    """transformers drops the cache under gradient checkpointing because a recomputed layer
    would write it twice; the frozen prefix cache is only read, so it may stay."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True
        elif getattr(module, "gradient_checkpointing", False) is True:
            # a model-level flag (GPT-2) would drop the cache before the layers see it; the
            # layers' own flags still checkpoint them
            module.gradient_checkpointing = False


def prefix_forward(
    model: nn.Module,
    keys: torch.Tensor,
    values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits of a (right-padded) batch with the prefix in front; differentiable in the prefix."""
    batch, length = input_ids.shape[0], keys.shape[2]
    if getattr(model, "is_activation_checkpointing", False):
        keep_cache_when_checkpointing(model)
    cache = prefix_cache(model, keys, values, batch, frozen=True)
    ones = torch.ones((batch, length), dtype=attention_mask.dtype, device=attention_mask.device)
    out = model(
        input_ids=input_ids,
        attention_mask=torch.cat([ones, attention_mask], dim=1),
        past_key_values=cache,
        use_cache=True,
    )
    return out.logits


@torch.no_grad()
def text_prefix(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen model's own keys/values for a text ([layers, kv_heads, L, head_dim]): the
    `text` initialisation of a prefix."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(input_ids=input_ids, past_key_values=cache, use_cache=True)
    keys = torch.stack([layer.keys[0] for layer in cache.layers])
    values = torch.stack([layer.values[0] for layer in cache.layers])
    return keys, values


@dataclass
class PrefixKV:
    """Per-layer key/value prefixes, each [layers, kv_heads, L, head_dim]."""

    keys: torch.Tensor
    values: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.keys.shape[-2])

    @property
    def per_row(self) -> bool:
        """One prefix per batch row ([layers, rows, kv_heads, L, head_dim])."""
        return self.keys.ndim == 5


class PrefixEncoder(nn.Module):
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
        layers, kv_heads, head_dim = geometry
        shape = (layers, kv_heads, length, head_dim)
        torch.manual_seed(seed)
        if start is None:
            start = PrefixKV(torch.zeros(shape), torch.zeros(shape))
            if reparameterization == "none":
                start = PrefixKV(torch.randn(shape), torch.randn(shape))
        self.reparameterization = reparameterization
        if reparameterization == "none":
            self.keys = nn.Parameter(start.keys.float().clone())
            self.values = nn.Parameter(start.values.float().clone())
            return
        self.register_buffer("start", torch.stack([start.keys, start.values]).float())
        out = 2 * layers * kv_heads * head_dim
        self.embedding = nn.Embedding(length, hidden)
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


def save_prefix(prefix: SavedPrefix, path) -> Path:
    """Write the prefix artifact atomically: final keys/values and the shared header."""
    from softprompt.methods.prompt import header_metadata, write_safetensors_atomic

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "prefix.keys": prefix.kv.keys.detach().float().cpu().contiguous(),
        "prefix.values": prefix.kv.values.detach().float().cpu().contiguous(),
    }
    write_safetensors_atomic(tensors, header_metadata(prefix), target)
    return target


def load_prefix(path) -> SavedPrefix:
    """Read and validate a prefix artifact."""
    from softprompt.methods.prompt import read_artifact

    tensors, fields = read_artifact(path, "prefix")
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
    return SavedPrefix(kv=PrefixKV(keys.float(), values.float()), **fields)


def load_artifact(path):
    """A soft prompt or a prefix, whichever the file holds."""
    from softprompt.methods.prompt import load_prompt, read_safetensors

    _, meta = read_safetensors(path)
    return load_prefix(path) if meta.get("method") == "prefix" else load_prompt(path)
