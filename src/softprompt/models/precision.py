"""Which precision a run trains in: `train.precision: auto` picks bfloat16 only where the
hardware computes it natively, because elsewhere bf16 is emulated and many times slower than
fp32 (0.3 against 154 GFLOP/s for a 2048² matmul on an AVX2-only CPU, BENCHMARKS.md)."""

from __future__ import annotations

import torch

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}


def native_bf16(device: torch.device) -> bool:
    """True where `device` runs bfloat16 matmuls in hardware: a CUDA GPU with bf16 (Ampere and
    newer), or a CPU with AVX-512 bf16 instructions or AMX tiles."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def precision_of(dtype: torch.dtype) -> str:
    """The `train.precision` name ("fp32", "bf16") of a model dtype; torch's name for others."""
    names = {getattr(torch, name): precision for precision, name in DTYPE_NAMES.items()}
    return names.get(dtype, str(dtype).removeprefix("torch."))


def training_precision(precision: str, devices: list[torch.device]) -> str:
    """The precision ("fp32" or "bf16") a `train.precision` means on these devices: `auto` is
    bf16 when every one of them computes it natively, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if all(native_bf16(d) for d in devices) else "fp32"
