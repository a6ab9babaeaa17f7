"""Fitted embedding alignments cached on disk, keyed by the two models' content and settings.

A fit reads both full embedding tables and solves a least-squares or SVD problem, so a map is
fitted once and kept as a safetensors file under the softprompt cache. The cache key hashes
each model's vocabulary and a sample of its embedding rows (a fingerprint) with the fit's
settings, so a changed model or setting never reuses a stale map.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from softprompt.alignment.fit import (
    DEFAULT_HOLDOUT,
    DEFAULT_METHOD,
    DEFAULT_RIDGE_LAMBDA,
    Alignment,
    check_settings,
    fit_alignment,
    settings_of,
)
from softprompt.errors import PromptFileError
from softprompt.files import read_safetensors, write_safetensors_atomic
from softprompt.models import Backbone, as_backbone, cache_root

FORMAT_NAME = "softprompt-alignment"
FORMAT_VERSION = "1"


def model_fingerprint(backbone: Backbone) -> str:
    """A content hash of a model's identity for the cache: its vocabulary and a strided sample
    of its (scaled) embedding rows, so a changed model never reuses a stale map."""
    weight = backbone.input_embeddings.weight.detach()
    stride = max(1, weight.shape[0] // 4096)
    rows = weight[::stride].float().cpu()
    scale = getattr(backbone.input_embeddings, "embed_scale", None)
    if scale is not None:
        rows = rows * float(scale)
    digest = hashlib.sha256()
    vocab = sorted(backbone.tokenizer.get_vocab().items())
    digest.update(json.dumps([list(weight.shape), vocab], ensure_ascii=False).encode())
    digest.update(rows.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _slug(name: str) -> str:
    tail = Path(name.rstrip("/")).name or name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", tail)[:40] or "model"


def alignment_cache_path(source: Backbone, target: Backbone, settings: dict) -> tuple[Path, str]:
    """Where the map for these two models and settings is cached, and its cache key."""
    identity = {
        "format_version": FORMAT_VERSION,
        "source": model_fingerprint(source),
        "target": model_fingerprint(target),
        "settings": settings,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    name = f"{_slug(source.name)}--{_slug(target.name)}--{settings['method']}-{key[:16]}"
    return cache_root() / "alignments" / f"{name}.safetensors", key


def save_alignment(alignment: Alignment, path: str | Path, key: str = "") -> Path:
    """Write the map as one safetensors file (weight, bias; JSON metadata), atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "key": key,
        "method": alignment.method,
        "source": alignment.source,
        "target": alignment.target,
        "settings": json.dumps(alignment.settings, sort_keys=True),
        "quality": json.dumps(alignment.quality, sort_keys=True),
    }
    tensors = {"weight": alignment.weight.contiguous(), "bias": alignment.bias.contiguous()}
    write_safetensors_atomic(tensors, metadata, target)
    return target


def read_alignment(path: str | Path, key: str | None = None) -> Alignment:
    """Read a saved map; with `key`, refuse one saved for other models or settings."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise PromptFileError(f"{path} is not a softprompt alignment (format {FORMAT_VERSION})")
    if key is not None and meta.get("key") != key:
        raise PromptFileError(f"{path} was fitted for other models or settings")
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or weight.ndim != 2 or bias.shape != weight.shape[1:]:
        raise PromptFileError(f"{path}: an alignment needs weight [d_a, d_b] and bias [d_b]")
    try:
        settings, quality = json.loads(meta["settings"]), json.loads(meta["quality"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise PromptFileError(f"{path}: alignment metadata is missing or not JSON") from exc
    return Alignment(
        weight=weight.float(),
        bias=bias.float(),
        method=meta.get("method", ""),
        source=meta.get("source", ""),
        target=meta.get("target", ""),
        quality=quality,
        settings=settings,
        path=str(path),
    )


def load_alignment(
    source: Backbone | str,
    target: Backbone | str,
    method: str = DEFAULT_METHOD,
    *,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    ridge_lambda: float = DEFAULT_RIDGE_LAMBDA,
    refit: bool = False,
    dtype: str = "float32",
) -> Alignment:
    """The map source -> target: read from the cache when fitted before for the same models
    (content hash) and settings, else fitted and cached (`refit=True` always fits anew).

    A cache file that is unreadable or for other models is ignored and replaced.
    """
    check_settings(method, holdout, ridge_lambda)
    source, target = as_backbone(source, dtype), as_backbone(target, dtype)
    settings = settings_of(method, holdout, seed, ridge_lambda)
    path, key = alignment_cache_path(source, target, settings)
    if not refit and path.is_file():
        try:
            return read_alignment(path, key)
        except PromptFileError:
            pass
    fitted = fit_alignment(
        source, target, method, holdout=holdout, seed=seed, ridge_lambda=ridge_lambda
    )
    save_alignment(fitted, path, key)
    fitted.path = str(path)
    return fitted
