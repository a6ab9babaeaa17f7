"""The steering layer: per-row steerings and mixed batches (soft prompts and prefixes of
different lengths beside bare rows) give every row what it gets alone."""

from __future__ import annotations

import pytest
import torch

from softprompt.generation import SamplingOptions, generate
from softprompt.steering.base import NoSteering
from softprompt.steering.forward import as_steering
from softprompt.steering.mixed import MixedSteering
from softprompt.steering.prefix import PrefixKV, prefix_geometry
from softprompt.steering.prompt import PromptSteering

TEXTS = ["it was good", "awful", "the review was great and positive", "bad"]


def _steerings(backbone, seed: int = 0) -> list:
    generator = torch.Generator().manual_seed(seed)
    layers, kv_heads, head_dim = prefix_geometry(backbone.model)
    d = backbone.hidden_size

    def prefix(length: int) -> PrefixKV:
        shape = (layers, kv_heads, length, head_dim)
        return PrefixKV(
            torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        )

    return [
        PromptSteering(torch.randn(3, d, generator=generator)),
        prefix(2),
        NoSteering(),
        PromptSteering(torch.randn(5, d, generator=generator)),
        prefix(4),
    ]


def _right_padded(backbone, texts):
    encoded = backbone.tokenizer(texts, return_tensors="pt", padding=True)
    return encoded.input_ids, encoded.attention_mask


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_a_mixed_batch_gives_every_row_its_own_hidden_states(tiny, family):
    backbone = tiny[family]
    rows = _steerings(backbone)
    texts = (TEXTS * 2)[: len(rows)]
    ids, mask = _right_padded(backbone, texts)
    with torch.no_grad():
        mixed, offset = MixedSteering(rows).hidden(backbone, ids, mask)
        for r, steering in enumerate(rows):
            real = int(mask[r].sum())
            alone, alone_offset = steering.hidden(
                backbone, ids[r : r + 1, :real], mask[r : r + 1, :real]
            )
            torch.testing.assert_close(
                mixed[r, offset : offset + real],
                alone[0, alone_offset : alone_offset + real],
                atol=2e-5,
                rtol=1e-4,
            )


def test_per_row_steerings_select_their_rows(tiny):
    backbone = tiny["llama"]
    prompts = torch.randn(3, 4, backbone.hidden_size)
    picked = PromptSteering(prompts).select(torch.tensor([2, 0, 2]))
    assert torch.equal(picked.embedding, prompts[[2, 0, 2]])
    keys = torch.randn(2, 3, 1, 4, 8)
    prefix = PrefixKV(keys, keys + 1).select(torch.tensor([1, 1]))
    assert torch.equal(prefix.keys, keys[:, [1, 1]]) and prefix.per_row
    whole = PromptSteering(prompts[0])
    assert whole.select(torch.tensor([0, 1])) is whole  # batch-wide: every row alike
    mixed = MixedSteering(_steerings(backbone)).select(torch.tensor([3, 2]))
    assert [type(r) for r in mixed.rows] == [PromptSteering, NoSteering]


def test_as_steering_reads_what_callers_pass():
    assert isinstance(as_steering(None), NoSteering)
    assert isinstance(as_steering(torch.zeros(2, 4)), PromptSteering)
    assert isinstance(as_steering([None, torch.zeros(2, 4)]), MixedSteering)
    prefix = PrefixKV(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    assert as_steering(prefix) is prefix


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_generation_of_a_mixed_batch_equals_each_row_alone(tiny, family):
    backbone = tiny[family]
    rows = _steerings(backbone, seed=1)
    texts = (TEXTS * 2)[: len(rows)]
    options = SamplingOptions(max_new_tokens=6, greedy=True)
    together = generate(backbone, texts, rows, options)
    alone = [generate(backbone, [t], s, options)[0] for t, s in zip(texts, rows)]
    assert together == alone
