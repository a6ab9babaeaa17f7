"""Prefix injection (Li & Liang): per-layer key/value prefixes of L positions, sized by the
model's key-value heads, given to the model as a pre-filled cache of the installed transformers.

Positions agree between training and generation because both see the prefix as L cached
positions (the text starts at position L). For training, the cache layers are made
non-mutating, so gradient checkpointing can recompute a layer without the cache growing.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer

from softprompt.models import Backbone
from softprompt.steering.base import Steering, SteeringParts, cpu_read, flat_positions
from softprompt.steering.packing import (
    attention_mask_for,
    pack,
    packed_positions,
    plan_packing,
    unpack,
)


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

    `frozen=True` (training, scoring): every forward sees exactly the prefix, however often a
    layer runs; every layer holds it whole, also a sliding-window one (whose generation cache
    keeps only its window), since the attention is handed the prefix's every position.
    `frozen=False` (generation): the cache grows with the generated tokens as usual.
    """
    if frozen:
        cache = DynamicCache(ddp_cache_data=[(None, None)] * keys.shape[0])  # plain layers
    else:
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
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True
        elif getattr(module, "gradient_checkpointing", False) is True:
            # a model-level flag (GPT-2) would drop the cache before the layers see it; the
            # layers' own flags still checkpoint them
            module.gradient_checkpointing = False


@torch.no_grad()
def text_prefix(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen model's own keys/values for a text ([layers, kv_heads, L, head_dim]): the
    `text` initialisation of a prefix, and a document put in front. A cache built without the
    config keeps every position of every layer (one from the config keeps only the window of a
    sliding-window layer, which a prefix longer than the window needs whole)."""
    cache = DynamicCache()
    model(input_ids=input_ids, past_key_values=cache, use_cache=True)
    keys = torch.stack([layer.keys[0] for layer in cache.layers])
    values = torch.stack([layer.values[0] for layer in cache.layers])
    return keys, values


@dataclass
class PrefixKV(Steering):
    """Per-layer key/value prefixes, each [layers, kv_heads, L, head_dim] for the whole batch,
    or [layers, rows, kv_heads, L, head_dim] one per row."""

    keys: torch.Tensor
    values: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.keys.shape[-2])

    @property
    def per_row(self) -> bool:
        return self.keys.ndim == 5

    def select(self, rows: torch.Tensor) -> Steering:
        if not self.per_row:
            return self
        rows = rows.to(self.keys.device)
        return PrefixKV(self.keys[:, rows], self.values[:, rows])

    def parts(self) -> SteeringParts:
        if self.per_row:
            raise ValueError("a per-row prefix has no single set of parts; select a row first")
        return SteeringParts(keys=self.keys, values=self.values)

    def hidden(self, backbone, input_ids, attention_mask, read=None):
        device = backbone.device
        embeds = backbone.embed(input_ids.to(device))
        return _prefixed_hidden(backbone, self, embeds, attention_mask.to(device), read), 0


def _prefixed_hidden(backbone: Backbone, prefix: PrefixKV, embeds, attention_mask, read=None):
    """Hidden states of the text after a key/value prefix (positions start at L)."""
    model = backbone.model
    if getattr(model, "is_activation_checkpointing", False):
        keep_cache_when_checkpointing(model)
    batch, device = embeds.shape[0], embeds.device
    read = cpu_read(read, device)
    if device.type == "cpu" and not prefix.per_row:
        packing = plan_packing(attention_mask, prefix.length)
        if packing is not None:
            return _packed_hidden(backbone, prefix, embeds, packing, read)
    cache = prefix_cache(
        model, prefix.keys.to(device), prefix.values.to(device), batch, frozen=True
    )
    ones = torch.ones((batch, prefix.length), dtype=attention_mask.dtype, device=device)
    mask = torch.cat([ones, attention_mask], dim=1)
    keep = flat_positions(read, embeds.shape[1], 0)
    return backbone.body(embeds, mask, past_key_values=cache, read=keep)


def _packed_hidden(
    backbone: Backbone, prefix: PrefixKV, embeds, packing, read=None
) -> torch.Tensor:
    """`_prefixed_hidden` with the texts packed several to a row (softprompt.steering.packing)."""
    model, device = backbone.model, embeds.device
    cache = prefix_cache(
        model, prefix.keys.to(device), prefix.values.to(device), packing.rows, frozen=True
    )
    width = embeds.shape[1]
    mask = attention_mask_for(model, packing.mask, embeds.dtype)
    keep = None if read is None else packed_positions(packing, read, width)
    hidden = backbone.body(
        pack(embeds, packing, width),
        mask,
        past_key_values=cache,
        position_ids=packing.positions,
        segments=packing.segments,
        read=keep,
    )
    return unpack(hidden, packing, embeds.shape[0])
