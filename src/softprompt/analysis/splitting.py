"""The token splitting analysis: which model each prompt token serves (owner, by importance)
and where it lies (location, by a k-NN vote among the models' stacked embedding matrices)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTANCES = ("cosine", "l2")


def owners(importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Owner of each token = the model where ablating it hurts most; and that importance.

    `importance` is [M, L]; returns owner [L] (model index) and strength [L].
    """
    strength, owner = importance.max(dim=0)
    return owner, strength


def knn_location(
    prompt: torch.Tensor | list[torch.Tensor],
    tables: list[torch.Tensor],
    k: int = 7,
    distance: str = "cosine",
    chunk: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vote among the k nearest rows of the stacked embedding matrices, each row labelled by
    its model; a tie goes to the tied model with the nearest row. Returns location [L] and
    the vote counts [L, M].

    `prompt` is one [L, d] matrix for all tables, or one per table (a cross-architecture
    prompt's view in each model's space; cosine distances then compare across spaces, L2
    distances carry each space's own scale)."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}")
    points = prompt if isinstance(prompt, list) else [prompt] * len(tables)
    length = points[0].shape[0]
    best_dist = torch.full((length, 0), 0.0)
    best_model = torch.zeros((length, 0), dtype=torch.long)
    for model, table in enumerate(tables):
        point = points[model].float()
        for start in range(0, table.shape[0], chunk):
            rows = table[start : start + chunk].float()
            dist = _distance(point, rows, distance)
            keep = min(k, dist.shape[1])
            top = dist.topk(keep, dim=1, largest=False)
            best_dist = torch.cat([best_dist, top.values], dim=1)
            best_model = torch.cat([best_model, torch.full_like(top.indices, model)], dim=1)
            order = best_dist.topk(min(k, best_dist.shape[1]), dim=1, largest=False).indices
            best_dist, best_model = best_dist.gather(1, order), best_model.gather(1, order)
    votes = F.one_hot(best_model, len(tables)).sum(dim=1)  # [L, M]
    location = torch.empty(length, dtype=torch.long)
    for token in range(length):
        tied = (votes[token] == votes[token].max()).nonzero().flatten()
        # neighbours are sorted nearest first: the first one from a tied model wins
        location[token] = next(int(m) for m in best_model[token] if m in tied)
    return location, votes


def _distance(prompt: torch.Tensor, rows: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "cosine":
        return 1 - F.normalize(prompt, dim=-1) @ F.normalize(rows, dim=-1).T
    return torch.cdist(prompt, rows)


def alignment(owner: torch.Tensor, location: torch.Tensor) -> float:
    """Share of tokens whose location is their owner (chance level: 1 / number of models)."""
    return float((owner == location).float().mean())
