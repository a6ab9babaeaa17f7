"""The one-pass full-vocabulary log-probabilities must equal log_softmax over the whole head,
values and gradients, across chunk boundaries, with and without a bias."""

from __future__ import annotations

import pytest
import torch

from softprompt.kernels.logprobs import CHUNK_ROWS, vocab_logprobs


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape", [(6,), (3, 4)])
def test_equals_log_softmax_and_its_gradient(with_bias, shape):
    generator = torch.Generator().manual_seed(0)
    vocab, width = 2 * CHUNK_ROWS + 77, 24  # three chunks, the last one short
    weight = torch.randn(vocab, width, generator=generator)
    bias = torch.randn(vocab, generator=generator) if with_bias else None
    start = torch.randn(*shape, width, generator=generator)
    token_ids = torch.randint(0, vocab, (*shape, 3), generator=generator)
    upstream = torch.randn(*shape, 3, generator=generator)

    hidden = start.clone().requires_grad_(True)
    got = vocab_logprobs(hidden, weight, bias, token_ids)
    (got * upstream).sum().backward()

    reference_hidden = start.clone().requires_grad_(True)
    logits = reference_hidden @ weight.T + (bias if bias is not None else 0.0)
    want = torch.log_softmax(logits, dim=-1).gather(-1, token_ids)
    (want * upstream).sum().backward()

    assert got.dtype == torch.float32 and got.shape == (*shape, 3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden.grad, reference_hidden.grad, atol=1e-5, rtol=1e-4)


def test_large_logits_do_not_overflow():
    weight = torch.eye(4).repeat(CHUNK_ROWS, 1) * 1000.0  # logits up to 1000 in every chunk
    weight[-1] = 2000.0
    hidden = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    got = vocab_logprobs(hidden, weight, None, torch.tensor([[0, weight.shape[0] - 1]]))
    want = torch.log_softmax(hidden @ weight.T, dim=-1)[:, [0, weight.shape[0] - 1]]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)


def test_bfloat16_hidden_states_stay_close_to_float32():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(CHUNK_ROWS + 5, 16, generator=generator)
    hidden = torch.randn(5, 16, generator=generator)
    token_ids = torch.randint(0, weight.shape[0], (5, 2), generator=generator)
    full = vocab_logprobs(hidden, weight, None, token_ids)
    half = vocab_logprobs(hidden.bfloat16(), weight.bfloat16(), None, token_ids)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.2, rtol=0.05)
