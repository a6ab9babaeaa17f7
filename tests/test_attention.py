"""Segment attention: the packed rows' attention computed block by block must equal the dense
masked attention, values and gradients, and models must pick it up where it applies."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from softprompt.data import Example
from softprompt.kernels.attention import segment_attention, use_segment_attention
from softprompt.models import Backbone
from softprompt.models.tiny import build_tokenizer
from softprompt.steering.packing import plan_packing, plan_prompt_packing
from softprompt.tasks.classification import ClassificationTask

PROMPT = 3


class _Layer(torch.nn.Module):
    """What the attention functions read from the layer that calls them."""

    num_key_value_groups = 2
    is_causal = True


def _packed_batch(lengths: list[int], capacity: int):
    mask = torch.zeros((len(lengths), max(lengths)), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return plan_prompt_packing(mask, PROMPT, capacity=capacity)


def _real_positions(packing) -> torch.Tensor:
    """[rows, width] True at the prompt and text positions (not the row's trailing pads)."""
    real = torch.zeros(packing.mask.shape[0], packing.mask.shape[-1], dtype=torch.bool)
    real[:, :PROMPT] = True
    real[packing.target] = True
    return real


def _attend(function, packing, inputs, **kwargs):
    out, _ = function(_Layer(), *inputs, packing.mask, scaling=0.3, **kwargs)
    return out


def _assert_segments_match_dense(packing, real, key_positions, window, dtype="float32"):
    """Segment attention vs sdpa with the packing's dense mask (narrowed to the window): the
    outputs at the `real` query positions and all gradients must agree."""
    rows, width, keys = packing.mask.shape[0], packing.mask.shape[2], key_positions.shape[1]
    generator = torch.Generator().manual_seed(0)
    shapes = [(rows, 4, width, 8), (rows, 2, keys, 8), (rows, 2, keys, 8)]  # grouped queries
    start = [torch.randn(shape, generator=generator).to(getattr(torch, dtype)) for shape in shapes]
    upstream = torch.randn(rows, width, 4, 8, generator=generator) * real[..., None, None]
    upstream = upstream.to(start[0].dtype)
    dense_mask = packing.mask
    if window is not None:
        distance = packing.positions[:, :, None] - key_positions[:, None, :]
        dense_mask = dense_mask & (distance < window)[:, None]
    results = {}
    for name in ("dense", "segments"):
        inputs = [t.clone().requires_grad_(True) for t in start]
        if name == "dense":
            out, _ = sdpa_attention_forward(_Layer(), *inputs, dense_mask, scaling=0.3)
        else:
            kwargs = {"sliding_window": window} if window else {}
            out = _attend(segment_attention, packing, inputs, segments=packing.segments, **kwargs)
        (out * upstream).sum().backward()
        results[name] = (out[real], [t.grad for t in inputs])
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if dtype == "bfloat16" else {}
    torch.testing.assert_close(results["segments"][0], results["dense"][0], **tolerance)
    for got, want in zip(results["segments"][1], results["dense"][1]):
        torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize(("window", "dtype"), [(None, "float32"), (2, "float32"), (2, "bfloat16")])
def test_segments_equal_the_dense_masked_attention(window, dtype):
    packing = _packed_batch([5, 3, 7, 2, 4, 6], capacity=9)
    assert packing.rows > 1 and packing.segments is not None
    real = _real_positions(packing)
    _assert_segments_match_dense(packing, real, packing.positions, window, dtype)


@pytest.mark.parametrize("window", [None, 3])
def test_prefix_segments_equal_the_dense_masked_attention(window):
    """Texts packed after a cached prefix: keys are [prefix | row], queries the row."""
    lengths = [6, 2, 3, 5, 1, 4]
    mask = torch.zeros((len(lengths), max(lengths)), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    packing = plan_packing(mask, PROMPT)
    assert packing is not None and packing.segments is not None
    real = torch.zeros(packing.mask.shape[0], packing.mask.shape[2], dtype=torch.bool)
    real[packing.target] = True
    prefix = torch.arange(PROMPT).expand(packing.rows, -1)
    _assert_segments_match_dense(packing, real, torch.cat([prefix, packing.positions], 1), window)


def test_without_segments_it_is_plain_sdpa():
    packing = _packed_batch([4, 2, 3], capacity=9)
    rows, width = packing.mask.shape[0], packing.mask.shape[-1]
    inputs = [torch.randn(rows, h, width, 8) for h in (4, 2, 2)]
    torch.testing.assert_close(
        _attend(segment_attention, packing, inputs),
        _attend(sdpa_attention_forward, packing, inputs),
    )


def test_causal_models_load_with_segment_attention(tiny):
    for family, backbone in tiny.items():
        assert backbone.segment_attention == (family != "bert"), family


def test_gemma3_sliding_window_holds_in_packed_rows():
    """A sliding window shorter than prompt + text: the packed forward must still equal each
    [prompt; text] row run alone through the model's own masks."""
    import transformers as tf

    texts = ["great movie , good", "it was awful , bad bad bad", "good", "bad movie"]
    tokenizer = build_tokenizer([*texts, "review sentiment positive negative"], masked=False)
    torch.manual_seed(0)
    config = tf.Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=3,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0,
        bos_token_id=5,
        eos_token_id=6,
    )
    model = tf.Gemma3ForCausalLM(config).eval().requires_grad_(False)
    assert use_segment_attention(model)
    backbone = Backbone(name="gemma3-window", model=model, tokenizer=tokenizer, kind="causal")
    verbalizer = {"negative": " negative", "positive": " positive"}
    task = ClassificationTask(backbone, "review {text} sentiment", verbalizer, prompt_length=2)
    examples = [Example(t, "positive" if "good" in t else "negative") for t in texts]
    batch = task.collate([task.encode(e) for e in examples])
    assert plan_prompt_packing(batch.attention_mask, 2).rows < len(examples)
    prompt = torch.randn(2, 32) * 0.5
    with torch.no_grad():
        scores = task.class_scores(prompt, batch, full_vocab=True)
        for row, example in enumerate(examples):
            ids = tokenizer(f"review {example.text} sentiment").input_ids
            embeds = torch.cat([prompt[None], backbone.embed(torch.tensor([ids]))], dim=1)
            logits = model(inputs_embeds=embeds).logits[0, -1].float()
            reference = torch.log_softmax(logits, dim=-1)[task.class_token_ids]
            torch.testing.assert_close(scores[row], reference, atol=1e-5, rtol=1e-4)


def test_prompt_gradient_is_unchanged_under_gradient_checkpointing(tiny_dirs):
    """Checkpointed layers replay with the segments (and without the last-MLP cut): the
    prompt's gradient must be the one of the plain run."""
    from softprompt.models import load_backbone

    backbone = load_backbone(str(tiny_dirs["llama"]))
    assert backbone.segment_attention
    verbalizer = {"negative": " negative", "positive": " positive"}
    task = ClassificationTask(backbone, "review: {text} sentiment:", verbalizer, prompt_length=3)
    texts = ["great movie", "it was awful , bad", "good", "bad bad movie"]
    examples = [
        Example(t, "positive" if "good" in t or "great" in t else "negative") for t in texts
    ]
    batch = task.collate([task.encode(e) for e in examples])
    start = torch.randn(3, 32, generator=torch.Generator().manual_seed(0)) * 0.1
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            backbone.model.activation_checkpointing_enable({"use_reentrant": False})
            backbone.model.train()
        prompt = start.clone().requires_grad_(True)
        scores = task.class_scores(prompt, batch, full_vocab=True)
        task.losses(scores, batch.labels).sum().backward()
        grads.append(prompt.grad)
    assert backbone.model.is_activation_checkpointing
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)
    assert grads[0].abs().sum() > 0
