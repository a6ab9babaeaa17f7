"""Prefix injection (Li & Liang): per-layer key/value prefixes of L positions, sized by the
model's key-value heads, given to the model as a pre-filled cache of the installed transformers.

Positions agree between training and generation because both see the prefix as L cached
positions (the text starts at position L). For training, the cache layers are made
non-mutating, so gradient checkpointing can recompute a layer without the cache growing.

This module is the injection core for the prefix-tuning issue; training with `method: prefix`,
the suffix task and the CLI are not wired to it yet.
"""

from __future__ import annotations

import types

import torch
from torch import nn


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
    """A DynamicCache holding the prefix ([layers, kv_heads, L, head_dim] each) for a batch.

    `frozen=True` (training): every forward sees exactly the prefix, however often a layer runs.
    `frozen=False` (generation): the cache grows with the generated tokens as usual.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    dtype = model.get_input_embeddings().weight.dtype
    for index, layer in enumerate(cache.layers):
        shape = (batch_size, *keys.shape[1:])
        layer.update(keys[index].to(dtype).expand(shape), values[index].to(dtype).expand(shape))
        if frozen:
            layer.update = types.MethodType(_non_mutating_update, layer)
    return cache


def _keep_cache_when_checkpointing(model: nn.Module) -> None:
    """transformers drops the cache under gradient checkpointing because a recomputed layer
    would write it twice; the frozen prefix cache is only read, so it may stay."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True


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
        _keep_cache_when_checkpointing(model)
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
