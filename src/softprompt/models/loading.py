"""Loading a backbone from a spec: a bundled alias (`smollm2-135m`), a local model directory,
a `.gguf` file or a Hugging Face hub id; the device to run on."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import torch

from softprompt.errors import ConfigError, ModelError, UsageError
from softprompt.kernels.attention import use_segment_attention
from softprompt.models.backbone import (
    DTYPES,
    KIND_CHOICES,
    Backbone,
    ModelKind,
    auto_class,
    detect_kind,
)
from softprompt.models.bundled import BUNDLED, ensure_bundled
from softprompt.models.dispatch import check_device_map, dispatch_kwargs
from softprompt.models.gguf import ensure_gguf_converted, first_line, is_complete


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
    device_map: str | None = None,
    max_memory: dict | None = None,
) -> Backbone:
    """Load a frozen model (eval mode, no gradients) and its tokenizer from a model spec.

    `device_map="auto"` spreads the decoder layers over the devices within `max_memory`
    (accelerate's dispatch, offloading past it; softprompt.models.dispatch) from `device` on.

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
        if device_map is not None:
            check_device_map(device_map)
            extra |= dispatch_kwargs(
                auto_class(chosen), config, DTYPES[dtype], torch.device(device), max_memory
            )
        model = auto_class(chosen).from_pretrained(source, dtype=DTYPES[dtype], **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {spec!r} from {source}: {first_line(exc)}") from exc
    model.requires_grad_(False)
    model.eval()
    if device_map is None:
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
    if not (is_complete(folder) and (folder / "tokenizer.json").is_file()):
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
            f"hub could not provide it (offline or unknown id: {first_line(exc)})"
        ) from exc
