"""GGUF files: checked readable, dequantised once into a plain safetensors model in the cache
(`$SOFTPROMPT_CACHE`), marked complete only when whole."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from softprompt.errors import ModelError
from softprompt.files import atomic_folder
from softprompt.models.backbone import auto_class, detect_kind


def cache_root() -> Path:
    """Where converted models live: `$SOFTPROMPT_CACHE`, else the user cache directory."""
    env = os.environ.get("SOFTPROMPT_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("softprompt"))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def cached_model_dir(alias_or_key: str) -> Path:
    return cache_root() / "models" / alias_or_key


def ensure_gguf_converted(path: Path) -> Path:
    """The cached conversion of a user's `.gguf` file (keyed by path, size and mtime)."""
    stat = path.resolve().stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = cached_model_dir(f"gguf-{path.stem}-{key[:12]}")
    if not is_complete(target):
        check_gguf_readable(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(path, target)
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
        return f"cut short or damaged, {size} bytes: {first_line(exc).rstrip('.')}"
    return None


# the marker of a finished conversion; a new name makes older caches convert again (v2: the
# GGUF's chat template is kept)
COMPLETE = ".complete-v2"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def _gguf_chat_template(gguf: Path) -> str | None:
    """The chat template a GGUF file carries (transformers' GGUF loading drops it)."""
    import gguf as gguf_lib

    field = gguf_lib.GGUFReader(gguf).fields.get("tokenizer.chat_template")
    return bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else None


def convert_gguf(gguf: Path, target: Path) -> None:
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
        loaded = auto_class(detect_kind(config)).from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot read GGUF file {gguf}: {first_line(exc)}") from exc
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
