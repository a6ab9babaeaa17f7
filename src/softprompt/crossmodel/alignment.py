"""Embedding alignment between two models, and moving a soft prompt from one model to another.

A soft prompt lives in its model's input-embedding space. Two models with different tokenizers
and hidden sizes still share many token strings (" the", "ing", "\\n"), and each shared token
has an embedding row in both tables. A linear map fitted on those pairs, `x @ weight + bias`,
carries any vector of model A's space, a prompt included, into model B's space.

Two fits: `ridge` (least squares with a bias and a small penalty) and `procrustes` (an
orthogonal map between the centred and scaled tables, semi-orthogonal when the sizes differ,
then rescaled to B's spread and shifted to B's mean). A seeded share of the pairs is held out
and the map's quality reported as nearest-neighbour retrieval: a held-out source token counts
as found when its mapped vector's nearest row (cosine) among ALL of B's vocabulary rows is
its partner. Fitted maps are cached as safetensors files under the softprompt cache.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from softprompt.analysis.explain import embedding_table
from softprompt.errors import ModelError, PromptFileError, UsageError
from softprompt.methods.artifact import model_record, read_safetensors, write_safetensors_atomic
from softprompt.methods.prompt import SoftPrompt, load_prompt
from softprompt.models.backbone import Backbone, as_backbone, cache_root, load_backbone

METHODS = ("ridge", "procrustes")
DEFAULT_METHOD = "procrustes"
DEFAULT_HOLDOUT = 0.1
DEFAULT_RIDGE_LAMBDA = 0.01
MIN_PAIRS = 10
MAX_HOLDOUT = 0.5
RETRIEVAL_AMONG = "all target vocabulary rows"
FORMAT_NAME = "softprompt-alignment"
FORMAT_VERSION = "1"
BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


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


# --- shared vocabulary -----------------------------------------------------------------------


@dataclass(frozen=True)
class WordConvention:
    """How a tokenizer marks word boundaries in its token strings.

    bytelevel: GPT-2 byte alphabet ('Ġ' is a space); metaspace: `marker` (usually '▁') is a
    space; wordpiece: `marker` (usually '##') starts a token that continues a word and every
    other token starts one; plain: token strings are text as is.
    """

    kind: str
    marker: str = ""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the byte-level BPE alphabet)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, chars)}


BYTE_DECODER = {char: byte for byte, char in _bytes_to_unicode().items()}


def _component_nodes(component) -> Iterator[dict]:
    """The JSON nodes of a tokenizers decoder or pre-tokenizer, sequences flattened."""
    if component is None:
        return
    stack = [json.loads(component.__getstate__())]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.get("decoders") or [])
            stack.extend(node.get("pretokenizers") or [])


def word_convention(tokenizer) -> WordConvention:
    """The tokenizer's word-boundary convention, read from its decoder and pre-tokenizer (fast
    tokenizers), else guessed from which marker its vocabulary uses most."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return _guess_convention(tokenizer.get_vocab())
    nodes = [*_component_nodes(backend.decoder), *_component_nodes(backend.pre_tokenizer)]
    types = {node.get("type") for node in nodes}
    if "ByteLevel" in types:
        return WordConvention("bytelevel")
    for node in nodes:
        if node.get("type") == "Metaspace":
            return WordConvention("metaspace", node.get("replacement", "▁"))
        if node.get("type") == "Replace" and node.get("content") == " ":
            pattern = (node.get("pattern") or {}).get("String")
            if pattern and pattern != " ":
                return WordConvention("metaspace", pattern)
    for node in nodes:
        if node.get("type") == "WordPiece":
            return WordConvention("wordpiece", node.get("prefix", "##"))
    if type(backend.model).__name__ == "WordPiece":
        return WordConvention("wordpiece", backend.model.continuing_subword_prefix)
    return _guess_convention(tokenizer.get_vocab())


def _guess_convention(vocab: dict[str, int]) -> WordConvention:
    counts = {
        WordConvention("bytelevel"): sum(t.startswith("Ġ") for t in vocab),
        WordConvention("metaspace", "▁"): sum(t.startswith("▁") for t in vocab),
        WordConvention("wordpiece", "##"): sum(t.startswith("##") for t in vocab),
    }
    best = max(counts, key=counts.get)
    return best if counts[best] > 0.01 * len(vocab) else WordConvention("plain")


def normalize_token(token: str, convention: WordConvention) -> str | None:
    """A token's text with a leading space for "starts a word"; None when it is no text (a
    byte-fallback token, or byte-level bytes that are not whole UTF-8 characters)."""
    if BYTE_FALLBACK.match(token):
        return None
    if convention.kind == "bytelevel":
        try:
            return bytes(BYTE_DECODER[char] for char in token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return None
    if convention.kind == "metaspace":
        return token.replace(convention.marker, " ")
    if convention.kind == "wordpiece":
        marker = convention.marker
        return token[len(marker) :] if marker and token.startswith(marker) else " " + token
    return token


def normalized_vocabulary(tokenizer) -> dict[str, int]:
    """Normalised text -> token id for every ordinary token (special and byte-fallback tokens
    left out; added non-special tokens taken literally; the lowest id wins a duplicate)."""
    convention = word_convention(tokenizer)
    added = dict(getattr(tokenizer, "added_tokens_decoder", None) or {})
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    special |= {index for index, token in added.items() if getattr(token, "special", False)}
    table: dict[str, int] = {}
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if index in special:
            continue
        text = str(added[index]) if index in added else normalize_token(token, convention)
        if text and text not in table:
            table[text] = index
    return table


def shared_vocabulary(tokenizer_a, tokenizer_b) -> list[tuple[int, int, str]]:
    """(id in A, id in B, text) for every token text both tokenizers have, by A's id.

    Texts are compared after normalising each tokenizer's word-boundary marker to a leading
    space: GPT-2 'Ġhello', SentencePiece '▁hello' and WordPiece 'hello' are all ' hello';
    'hello', '##hello' and a bare 'hello' continuing a word are all 'hello'.
    """
    vocab_a = normalized_vocabulary(tokenizer_a)
    vocab_b = normalized_vocabulary(tokenizer_b)
    pairs = [(index, vocab_b[text], text) for text, index in vocab_a.items() if text in vocab_b]
    return sorted(pairs)


# --- fitting ---------------------------------------------------------------------------------


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


def fit_ridge(x: torch.Tensor, y: torch.Tensor, ridge_lambda: float):
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


def fit_procrustes(x: torch.Tensor, y: torch.Tensor, ridge_lambda: float = 0.0):
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


FITTERS = {"ridge": fit_ridge, "procrustes": fit_procrustes}


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


def _aligned_pairs(source: Backbone, target: Backbone, rows_a: int, rows_b: int):
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
    table_a = embedding_table(source).cpu()
    table_b = embedding_table(target).cpu()
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


# --- cache -----------------------------------------------------------------------------------


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


# --- prompt transfer -------------------------------------------------------------------------


def _source_model(prompt: SoftPrompt, source: Backbone | str | None) -> Backbone | str:
    if source is not None:
        return source
    names = [m.get("name") for m in prompt.models if m.get("name")]
    if not names:
        raise UsageError(
            "the prompt's metadata names no model it was made for; give the source model "
            "(--from MODEL, or source= in Python)"
        )
    return str(names[0])


def transfer_prompt(
    prompt: SoftPrompt | str | Path,
    target: Backbone | str,
    method: str = DEFAULT_METHOD,
    *,
    source: Backbone | str | None = None,
    alignment: Alignment | None = None,
    holdout: float = DEFAULT_HOLDOUT,
    seed: int = 0,
    ridge_lambda: float = DEFAULT_RIDGE_LAMBDA,
    refit: bool = False,
    dtype: str = "float32",
) -> SoftPrompt:
    """The prompt mapped into `target`'s embedding space ([L, d_a] -> [L, d_b]).

    The source model is `source`, else the first model in the prompt's metadata; the map is
    `alignment` if given, else `load_alignment` (cached). The new prompt's header names the
    target as its model and records the source models, the map and its quality under `init`.
    """
    soft = prompt if isinstance(prompt, SoftPrompt) else load_prompt(prompt)
    check_settings(method, holdout, ridge_lambda)
    target = as_backbone(target, dtype)
    if alignment is None:
        model = as_backbone(_source_model(soft, source), dtype)
        soft.check_fits(model.hidden_size, model.name)
        alignment = load_alignment(
            model,
            target,
            method,
            holdout=holdout,
            seed=seed,
            ridge_lambda=ridge_lambda,
            refit=refit,
        )
    soft.check_fits(alignment.source_dim, alignment.source, source="prompt")
    if alignment.target_dim != target.hidden_size:
        raise UsageError(
            f"the alignment maps into size {alignment.target_dim} but model {target.name} has "
            f"hidden size {target.hidden_size}"
        )
    with torch.no_grad():
        mapped = alignment.apply(soft.embedding.float())
    init = {
        "init": "transfer",
        "source_models": soft.models,
        "source_init": soft.init,
        "source_training": soft.training,
        "alignment": alignment.summary(),
    }
    return SoftPrompt(embedding=mapped, models=[model_record(target)], task=soft.task, init=init)


def random_like(prompt: SoftPrompt, seed: int = 0) -> SoftPrompt:
    """A random prompt with the same shape and the same per-token norms (a baseline)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(prompt.embedding.shape, generator=generator)
    rows = F.normalize(noise, dim=1) * prompt.embedding.float().norm(dim=1, keepdim=True)
    return SoftPrompt(
        embedding=rows, models=prompt.models, task=prompt.task, init={"init": "random"}
    )


def evaluate_transfer(
    transferred: SoftPrompt,
    target: Backbone,
    *,
    config: str | Path,
    split: str = "test",
    source_prompt: SoftPrompt | None = None,
    source: Backbone | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> list[dict]:
    """Metrics on the config's task: B zero-shot, the transferred prompt on B, a random prompt
    of the same norms on B, and (given) the original prompt on its own model A."""
    from softprompt.evaluation import evaluate

    rows = [
        ("zero-shot", None, target),
        ("transferred", transferred, target),
        ("random (same norms)", random_like(transferred, seed), target),
    ]
    if source_prompt is not None and source is not None:
        rows.append(("source prompt on its model", source_prompt, source))
    results = []
    for name, prompt, model in rows:
        metrics = evaluate(prompt, model, config=config, split=split, batch_size=batch_size)
        results.append({**metrics, "row": name, "prompt": name})
    return results


def run_transfer(
    prompt_path: str | Path,
    to: str,
    out: str | Path,
    *,
    method: str = DEFAULT_METHOD,
    source: str | None = None,
    config: str | Path | None = None,
    split: str = "test",
    batch_size: int = 32,
    dtype: str = "float32",
    refit: bool = False,
) -> dict:
    """What `softprompt transfer` does: map, write the new prompt, optionally evaluate on B."""
    from softprompt.config import load_config
    from softprompt.methods.prompt import save_prompt

    check_settings(method, DEFAULT_HOLDOUT, DEFAULT_RIDGE_LAMBDA)
    if config is not None:
        load_config(config)  # a bad config fails before any work
    soft = load_prompt(prompt_path)
    model_a = load_backbone(str(_source_model(soft, source)), dtype=dtype)
    model_b = load_backbone(to, dtype=dtype)
    soft.check_fits(model_a.hidden_size, model_a.name, source=str(prompt_path))
    alignment = load_alignment(model_a, model_b, method, refit=refit)
    transferred = transfer_prompt(soft, model_b, alignment=alignment)
    written = save_prompt(transferred, out)
    result = {
        "prompt": str(prompt_path),
        "path": str(written),
        "alignment": {**alignment.summary(), "cache": alignment.path},
    }
    if config is not None:
        result["evaluation"] = evaluate_transfer(
            transferred,
            model_b,
            config=config,
            split=split,
            source_prompt=soft,
            source=model_a,
            batch_size=batch_size,
        )
    return result


def align_both(
    model_a: str, model_b: str, method: str = DEFAULT_METHOD, *, dtype: str = "float32"
) -> dict:
    """What `softprompt align` does: the map's quality A -> B and B -> A (both cached)."""
    check_settings(method, DEFAULT_HOLDOUT, DEFAULT_RIDGE_LAMBDA)
    a, b = load_backbone(model_a, dtype=dtype), load_backbone(model_b, dtype=dtype)
    forward = load_alignment(a, b, method)
    backward = load_alignment(b, a, method)
    return {
        "method": method,
        "directions": [
            {"source": a.name, "target": b.name, **forward.quality},
            {"source": b.name, "target": a.name, **backward.quality},
        ],
    }
