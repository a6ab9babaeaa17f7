"""Nearest vocabulary tokens of each prompt token ("back translation"), by cosine and L2."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_tokens(
    prompt: torch.Tensor, table: torch.Tensor, tokenizer, top_k: int = 5
) -> list[dict]:
    """For each prompt token: the top-k vocabulary tokens by cosine similarity (higher is
    nearer) and by L2 distance (lower is nearer), with their scores."""
    prompt, table = prompt.float(), table.float()
    cosine = F.normalize(prompt, dim=-1) @ F.normalize(table, dim=-1).T
    l2 = torch.cdist(prompt, table)
    by_cosine = cosine.topk(top_k, dim=1)
    by_l2 = l2.topk(top_k, dim=1, largest=False)
    rows = []
    for token in range(prompt.shape[0]):
        rows.append(
            {
                "index": token,
                "cosine": _entries(tokenizer, by_cosine.indices[token], by_cosine.values[token]),
                "l2": _entries(tokenizer, by_l2.indices[token], by_l2.values[token]),
            }
        )
    return rows


def _entries(tokenizer, ids: torch.Tensor, scores: torch.Tensor) -> list[dict]:
    return [
        {"id": int(i), "token": tokenizer.decode([int(i)]), "score": float(s)}
        for i, s in zip(ids, scores)
    ]
