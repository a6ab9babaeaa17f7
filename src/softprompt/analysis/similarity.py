"""Similarity of soft prompts: {cosine, euclidean} x {mean prompt, pairwise, all pairs}.

mean_prompt: average each prompt's L tokens first, then compare the two means;
pairwise: token i of one prompt vs token i of the other, averaged over i (equal lengths);
all_pairs: every token of one vs every token of the other, averaged over L*L (diagonal
included). A prompt's euclidean all-pairs distance to itself is its "inner complexity".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softprompt.errors import UsageError

METRICS = (
    "cosine_mean_prompt",
    "cosine_pairwise",
    "cosine_all_pairs",
    "euclidean_mean_prompt",
    "euclidean_pairwise",
    "euclidean_all_pairs",
)


def similarity_matrices(prompts: list[torch.Tensor]) -> dict[str, list[list[float | None]]]:
    """All six metrics as P x P matrices; pairwise is None for prompts of different lengths."""
    sizes = {p.shape[1] for p in prompts}
    if len(sizes) > 1:
        raise UsageError(f"prompts have different hidden sizes {sorted(sizes)}; compare like ones")
    stacked = [p.float() for p in prompts]
    means = torch.stack([p.mean(dim=0) for p in stacked])  # [P, d]
    result = {
        "cosine_mean_prompt": F.cosine_similarity(means[:, None], means[None], dim=-1),
        "euclidean_mean_prompt": _distances(means, means),
    }
    tokens = torch.cat(stacked)  # every token of every prompt, [sum L, d]
    owner = torch.cat([torch.full((p.shape[0],), i) for i, p in enumerate(stacked)])
    lengths = torch.tensor([p.shape[0] for p in stacked], dtype=torch.float32)
    averaging = (owner[None, :] == torch.arange(len(stacked))[:, None]).float() / lengths[:, None]
    unit = F.normalize(tokens, dim=-1)
    all_cos = averaging @ (unit @ unit.T) @ averaging.T
    all_l2 = averaging @ _distances(tokens, tokens) @ averaging.T
    pair_cos = torch.full((len(stacked),) * 2, float("nan"))
    pair_l2 = pair_cos.clone()
    for length in lengths.unique():  # pairwise is defined between prompts of one length
        group = (lengths == length).nonzero().flatten()
        block = torch.stack([stacked[i] for i in group])  # [G, L, d]
        units = F.normalize(block, dim=-1)
        cos = torch.einsum("ald,bld->ab", units, units) / block.shape[1]
        l2 = _distances(block.transpose(0, 1), block.transpose(0, 1)).mean(dim=0)
        pair_cos[group[:, None], group[None, :]] = cos
        pair_l2[group[:, None], group[None, :]] = l2
    result |= {
        "cosine_all_pairs": all_cos,
        "euclidean_all_pairs": all_l2,
        "cosine_pairwise": pair_cos,
        "euclidean_pairwise": pair_l2,
    }
    return {name: _to_lists(result[name]) for name in METRICS}


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances computed directly: `torch.cdist` otherwise switches to a matrix
    product past 25 rows, which in float32 moved a prompt's inner complexity by 1e-4 depending
    on how many other prompts were compared with it (12.67146 in a set of three vs 12.67134)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _to_lists(matrix: torch.Tensor) -> list[list[float | None]]:
    return [[None if torch.isnan(v) else float(v) for v in row] for row in matrix]


def inner_complexity(prompt: torch.Tensor) -> float:
    """Mean euclidean distance between all pairs of a prompt's tokens (diagonal included): the
    paper's "inner complexity" (Table 2). It stays for users reproducing that table by name
    (as tests/test_esp_table2.py does); the similarity matrices' diagonal holds the same."""
    return float(_distances(prompt.float(), prompt.float()).mean())
