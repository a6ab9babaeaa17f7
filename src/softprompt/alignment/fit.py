"""A linear map between two models' input-embedding spaces, fitted on their shared tokens.

A soft prompt lives in its model's input-embedding space. Each token text two models share
(softprompt.alignment.vocabulary) has an embedding row in both tables; a linear map fitted on
those pairs, `x @ weight + bias`, carries any vector of model A's space, a prompt included,
into model B's space.

Two fits: `ridge` (least squares with a bias and a small penalty) and `procrustes` (an
orthogonal map between the centred and scaled tables, semi-orthogonal when the sizes differ,
then rescaled to B's spread and shifted to B's mean). A seeded share of the pairs is held out
and the map's quality reported as nearest-neighbour retrieval: a held-out source token counts
as found when its mapped vector's nearest row (cosine) among ALL of B's vocabulary rows is
its partner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from softprompt.alignment.vocabulary import shared_vocabulary
from softprompt.errors import ModelError, UsageError
from softprompt.models import Backbone

METHODS = ("ridge", "procrustes")
DEFAULT_METHOD = "procrustes"
DEFAULT_HOLDOUT = 0.1
DEFAULT_RIDGE_LAMBDA = 0.01
MIN_PAIRS = 10
MAX_HOLDOUT = 0.5
RETRIEVAL_AMONG = "all target vocabulary rows"


@dataclass
class Alignment:
    """A fitted linear map from `source`'s input-embedding space [d_a] to `target`'s [d_b].

    `weight` [d_a, d_b] and `bias` [d_b] are float32 CPU tensors; `quality` holds the held-out
    retrieval scores and pair counts; `settings` the method's hyperparameters.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    method: str
    source: str
    target: str
    quality: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def source_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def target_dim(self) -> int:
        return int(self.weight.shape[1])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Map vectors [..., d_a] to [..., d_b] (computed in float32, returned in x's dtype and
        on x's device; differentiable in x)."""
        if x.shape[-1] != self.source_dim:
            raise UsageError(
                f"the alignment {self.source} -> {self.target} maps vectors of size "
                f"{self.source_dim}, got size {x.shape[-1]}"
            )
        weight = self.weight.to(x.device)
        bias = self.bias.to(x.device)
        return (x.float() @ weight + bias).to(x.dtype)

    def summary(self) -> dict:
        """What a transferred prompt's header records about the map."""
        return {
            "method": self.method,
            "source": self.source,
            "target": self.target,
            "settings": self.settings,
            "quality": self.quality,
        }


def check_settings(method: str, holdout: float, ridge_lambda: float) -> None:
    """Refuse an unknown method or out-of-range hyperparameters with one clear line."""
    if method not in METHODS:
        raise UsageError(f"unknown alignment method {method!r}; use one of {', '.join(METHODS)}")
    if not 0.0 <= holdout <= MAX_HOLDOUT:
        raise UsageError(f"holdout must be between 0 and {MAX_HOLDOUT}, got {holdout}")
    if ridge_lambda < 0:
        raise UsageError(f"ridge_lambda must be 0 or more, got {ridge_lambda}")


def settings_of(method: str, holdout: float, seed: int, ridge_lambda: float) -> dict:
    """The hyperparameters that determine a fit (ridge_lambda only matters for ridge)."""
    settings = {"method": method, "holdout": float(holdout), "seed": int(seed)}
    if method == "ridge":
        settings["ridge_lambda"] = float(ridge_lambda)
    return settings


def fit_ridge(
    x: torch.Tensor, y: torch.Tensor, ridge_lambda: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares with an unpenalised bias: min |Xc W - Yc|^2 + lam' |W|^2, where
    lam' = ridge_lambda x the mean squared norm of a centred feature column (scale-free)."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    penalty = ridge_lambda * float(xc.pow(2).sum(0).mean())
    eye = torch.eye(x.shape[1], dtype=x.dtype) * penalty**0.5
    padded_x = torch.cat([xc, eye])
    padded_y = torch.cat([yc, torch.zeros(x.shape[1], y.shape[1], dtype=y.dtype)])
    weight = torch.linalg.lstsq(padded_x, padded_y, driver="gelsd").solution
    return weight, y_mean - x_mean @ weight


def fit_procrustes(
    x: torch.Tensor, y: torch.Tensor, ridge_lambda: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal Procrustes between centred, RMS-scaled tables (SVD of Xn^T Yn; with d_a !=
    d_b the map U V^T is semi-orthogonal), rescaled to B's RMS spread and shifted to B's mean."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    x_scale, y_scale = xc.pow(2).sum(1).mean().sqrt(), yc.pow(2).sum(1).mean().sqrt()
    if float(x_scale) == 0.0 or float(y_scale) == 0.0:
        raise ModelError("the shared tokens' embeddings are all equal in one model; cannot align")
    u, _, vh = torch.linalg.svd((xc / x_scale).T @ (yc / y_scale), full_matrices=False)
    weight = (u @ vh) * (y_scale / x_scale)
    return weight, y_mean - x_mean @ weight


FITTERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "ridge": fit_ridge,
    "procrustes": fit_procrustes,
}


def split_pairs(count: int, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train / held-out indices of `count` pairs (at least one held out if holdout>0)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = max(1, round(holdout * count)) if holdout > 0 else 0
    return order[held:].sort().values, order[:held].sort().values


@torch.no_grad()
def retrieval_quality(
    mapped: torch.Tensor, true_ids: torch.Tensor, target_table: torch.Tensor, chunk: int = 256
) -> dict:
    """Top-1 / top-10 cosine retrieval of each mapped vector's true token among all rows of
    `target_table`, and the mean cosine between mapped and true rows."""
    if mapped.shape[0] == 0:
        return {"top1": None, "top10": None, "mean_cosine": None}
    targets = F.normalize(target_table.float(), dim=1)
    k = min(10, targets.shape[0])
    top1 = top10 = 0
    for start in range(0, mapped.shape[0], chunk):
        queries = F.normalize(mapped[start : start + chunk].float(), dim=1)
        best = (queries @ targets.T).topk(k, dim=1).indices
        truth = true_ids[start : start + chunk, None]
        top1 += int((best[:, :1] == truth).sum())
        top10 += int((best == truth).any(dim=1).sum())
    cosine = F.cosine_similarity(mapped.float(), target_table[true_ids].float(), dim=1)
    count = mapped.shape[0]
    return {"top1": top1 / count, "top10": top10 / count, "mean_cosine": float(cosine.mean())}


def _aligned_pairs(
    source: Backbone, target: Backbone, rows_a: int, rows_b: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared (id_a, id_b) pairs inside both embedding tables, or a clear error if too few."""
    pairs = [
        (a, b)
        for a, b, _ in shared_vocabulary(source.tokenizer, target.tokenizer)
        if a < rows_a and b < rows_b
    ]
    if len(pairs) < MIN_PAIRS:
        raise ModelError(
            f"models {source.name} and {target.name} share only {len(pairs)} token(s) after "
            f"normalising word markers; an alignment needs at least {MIN_PAIRS}"
        )
    ids = torch.tensor(pairs, dtype=torch.long)
    return ids[:, 0], ids[:, 1]


def fit_alignment(
    source: Backbone,
    target: Backbone,
    method: str = DEFAULT_METHOD,
    *,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    ridge_lambda: float = DEFAULT_RIDGE_LAMBDA,
) -> Alignment:
    """Fit the map from `source`'s input embeddings to `target`'s on their shared tokens.

    A seeded `holdout` share of the pairs is left out of the fit (the returned map is fitted
    on the rest) and scored by retrieval among all target vocabulary rows.
    """
    check_settings(method, holdout, ridge_lambda)
    table_a = source.embedding_table()
    table_b = target.embedding_table()
    ids_a, ids_b = _aligned_pairs(source, target, table_a.shape[0], table_b.shape[0])
    train, held = split_pairs(len(ids_a), holdout, seed)
    x, y = table_a[ids_a].double(), table_b[ids_b].double()
    weight, bias = FITTERS[method](x[train], y[train], ridge_lambda)
    mapped = (x[held] @ weight + bias).float()
    quality = {
        **retrieval_quality(mapped, ids_b[held], table_b),
        "retrieval_among": RETRIEVAL_AMONG,
        "shared_tokens": len(ids_a),
        "train_pairs": len(train),
        "heldout_pairs": len(held),
        "source_vocabulary": int(table_a.shape[0]),
        "target_vocabulary": int(table_b.shape[0]),
    }
    return Alignment(
        weight=weight.float().contiguous(),
        bias=bias.float().contiguous(),
        method=method,
        source=source.name,
        target=target.name,
        quality=quality,
        settings=settings_of(method, holdout, seed, ridge_lambda),
    )
