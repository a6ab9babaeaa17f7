"""Full-vocabulary log-probabilities of a few tokens, in one pass over the LM head.

The paper's loss needs log p(label word) = its logit - logsumexp over the whole vocabulary,
for a handful of label positions. For so few rows the head's matmul is bound by reading its
weight (SmolLM2's: 113 MB in fp32), and autograd reads it twice: once for the logits, once
for their gradient. Here the forward pass walks the head in chunks that stay in cache and
gathers, besides the logsumexp, the softmax-weighted mean of the head's rows, which is all the
backward pass needs: d/dh [logit_t - logsumexp] = w_t - sum_v p_v w_v.
"""

from __future__ import annotations

import torch

CHUNK_ROWS = 2048  # head rows per chunk: ~4.5 MB in fp32, read once and used twice in cache


class _VocabLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, token_ids):
        rows = hidden.reshape(-1, hidden.shape[-1])
        running_max = rows.new_full((rows.shape[0], 1), float("-inf"), dtype=torch.float32)
        total = torch.zeros_like(running_max)
        expected = (
            rows.new_zeros(rows.shape, dtype=torch.float32) if ctx.needs_input_grad[0] else None
        )
        for start in range(0, weight.shape[0], CHUNK_ROWS):
            part = weight[start : start + CHUNK_ROWS]
            logits = rows @ part.T
            if bias is not None:
                logits = logits + bias[start : start + CHUNK_ROWS]
            logits = logits.float()
            new_max = torch.maximum(running_max, logits.amax(dim=-1, keepdim=True))
            rescale = torch.exp(running_max - new_max)
            probs = torch.exp(logits - new_max)
            total = total * rescale + probs.sum(dim=-1, keepdim=True)
            if expected is not None:
                expected = expected * rescale + (probs.to(part.dtype) @ part).float()
            running_max = new_max
        chosen = weight[token_ids.reshape(rows.shape[0], -1)]  # [rows, C, d]
        picked = (chosen @ rows[:, :, None]).squeeze(-1)
        if bias is not None:
            picked = picked + bias[token_ids.reshape(rows.shape[0], -1)]
        if expected is not None:
            ctx.save_for_backward(chosen, expected / total)
            ctx.hidden_shape, ctx.hidden_dtype = hidden.shape, hidden.dtype
        return (picked.float() - running_max - torch.log(total)).view(token_ids.shape)

    @staticmethod
    def backward(ctx, grad):
        chosen, expected = ctx.saved_tensors
        grad = grad.reshape(chosen.shape[0], -1)
        wanted = (grad[:, :, None] * chosen.float()).sum(dim=1)
        grad_rows = wanted - grad.sum(dim=-1, keepdim=True) * expected
        return grad_rows.to(ctx.hidden_dtype).view(ctx.hidden_shape), None, None, None


def vocab_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, token_ids: torch.Tensor
) -> torch.Tensor:
    """log softmax(hidden @ weight.T + bias)[token_ids] (float32): hidden [..., d], token_ids
    [..., C] (the tokens wanted at each row) -> [..., C]. The head itself gets no gradient."""
    return _VocabLogProbs.apply(hidden, weight, bias, token_ids)
