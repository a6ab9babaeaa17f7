"""The last MLP runs only where the output is read: those states are exact, and the cut is
really made (the states nobody reads differ), for every causal family."""

from __future__ import annotations

import pytest
import torch

from softprompt.kernels.last_layer import last_mlp_at


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma3"])
def test_read_positions_are_exact_and_the_rest_is_skipped(tiny, family):
    backbone = tiny[family]
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 6, backbone.hidden_size, generator=generator)
    mask = torch.ones((2, 6), dtype=torch.long)
    read = torch.tensor([3, 6 + 5])  # row 0 position 3, row 1 position 5
    with torch.no_grad():
        full = backbone.body(embeds, mask).reshape(12, -1)
        cut = backbone.body(embeds, mask, read=read).reshape(12, -1)
    torch.testing.assert_close(cut[read], full[read])
    others = torch.ones(12, dtype=torch.bool)
    others[read] = False
    assert not torch.allclose(cut[others], full[others])


def test_the_model_is_restored_after_the_block(tiny):
    model = tiny["llama"].model
    before = model.base_model.layers[-1].mlp
    with last_mlp_at(model, torch.tensor([0])):
        assert model.base_model.layers[-1].mlp is not before
    assert model.base_model.layers[-1].mlp is before


def test_masked_models_are_left_alone(tiny):
    model = tiny["bert"].model
    modules = list(model.modules())
    with last_mlp_at(model, torch.tensor([0])):
        assert list(model.modules()) == modules
