"""2-D projection of prompt tokens among samples of each model's vocabulary embeddings:
PCA, then t-SNE (or UMAP when installed and asked for)."""

from __future__ import annotations

import numpy as np
import torch


def project(
    prompt: torch.Tensor,
    tables: list[torch.Tensor],
    sample: int = 600,
    method: str = "tsne",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Coordinates [n, 2] for `sample` vocabulary rows per model plus the prompt tokens,
    with each point's model index (prompt tokens: -1)."""
    from sklearn.decomposition import PCA

    generator = torch.Generator().manual_seed(seed)
    points, labels = [], []
    for model, table in enumerate(tables):
        rows = torch.randperm(table.shape[0], generator=generator)[:sample]
        points.append(table[rows].float())
        labels.append(np.full(len(rows), model))
    points.append(prompt.float())
    labels.append(np.full(prompt.shape[0], -1))
    data = torch.cat(points).numpy()
    reduced = PCA(n_components=min(50, data.shape[1], data.shape[0]), random_state=seed)
    reduced = reduced.fit_transform(data)
    coords = _embed_2d(reduced, method, seed)
    return {"coords": coords, "labels": np.concatenate(labels)}


def _embed_2d(data: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "umap":
        try:
            import umap
        except ImportError:
            method = "tsne"
        else:
            return umap.UMAP(random_state=seed).fit_transform(data)
    if method == "pca":
        return data[:, :2]
    from sklearn.manifold import TSNE

    perplexity = min(30.0, max(2.0, (data.shape[0] - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(
        data
    )
