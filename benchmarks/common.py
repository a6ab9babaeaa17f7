"""Helpers shared by the benchmarks: the machine description every benchmark prints, block
alternation of contenders within one process, and the ratio line.

Benchmarks run as scripts (`python benchmarks/bench_x.py`), so this folder is on `sys.path`
and they import this module as `common`.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the plain reference implementations the benchmarks race against live with the tests
sys.path.insert(0, str(ROOT / "tests"))
# CPU features that decide matmul speed in fp32 / bf16 (x86: AVX-512, its bf16 ops, AMX tiles).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, list[str]]:
    """CPU model name and its feature flags from /proc/cpuinfo (Linux; empty elsewhere)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return platform.processor() or platform.machine(), []
    name, flags = platform.machine(), []
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == platform.machine():
            name = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = value.split()
    return name, flags


def _cores() -> str:
    """Logical cores, and the ones this process may use when an affinity mask limits it."""
    total = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    return f"{total} cores" if usable == total else f"{usable} of {total} cores usable"


def machine() -> str:
    """One description of the machine for every benchmark's output: CPU, cores, the CPU
    features that decide fp32/bf16 speed, torch's bf16 support, torch version, threads, GPU.
    Numbers are only comparable between runs on the same description."""
    name, flags = _cpuinfo()
    present = [flag for flag in CPU_FLAGS if flag in flags] or ["none of " + "/".join(CPU_FLAGS)]
    mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    bf16 = "yes" if mkldnn_bf16 is not None and mkldnn_bf16() else "no"
    lines = [
        f"machine: {name} ({platform.machine()}), {_cores()}",
        f"  cpu flags: {' '.join(present)}; torch cpu capability "
        f"{torch.backends.cpu.get_cpu_capability()}; oneDNN bf16: {bf16}",
        f"  python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads",
    ]
    if torch.cuda.is_available():
        lines.append(f"  gpu: {torch.cuda.get_device_name()} (training runs there)")
    return "\n".join(lines)


def device() -> torch.device:
    """Where the benchmarks run: the device the trainer picks with `train.device: auto`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    """Wait for queued GPU work so a wall-clock time covers it (no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function: Callable[[], object]) -> tuple[object, float]:
    """The function's result and its wall-clock seconds (GPU work included)."""
    sync()
    started = time.perf_counter()
    result = function()
    sync()
    return result, time.perf_counter() - started


def alternate(
    contenders: dict[str, Callable[[], object]], rounds: int, per_round: int
) -> dict[str, list[float]]:
    """Seconds of every call, per contender, running them in blocks A B A B ... so that drift
    of the machine (other load, clocks, caches) hits all contenders alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, function in contenders.items():
            for _ in range(per_round):
                times[name].append(timed(function)[1])
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio_line(label: str, rates: dict[str, float], unit: str) -> str:
    """'label: A x unit, B y unit, ratio x/y' for two contenders, the first one ours."""
    (ours, mine), (theirs, other) = rates.items()
    return (
        f"{label}: {ours} {mine:.2f} {unit}, {theirs} {other:.2f} {unit}, "
        f"ratio {ours}/{theirs} {mine / other:.2f}x"
    )


def loss_agreement(losses: dict[str, list[float]]) -> str:
    """Whether two contenders compute the same loss: the first step's difference (same start,
    same batch: any gap is arithmetic, not a different loss), the last losses, the largest
    per-step gap (Adam's normalised steps let rounding differences grow over steps)."""
    (first, a), (second, b) = losses.items()
    gaps = [abs(x - y) for x, y in zip(a, b)]
    return (
        f"loss: first-step difference {gaps[0]:.2e}; after {len(gaps)} steps {first} "
        f"{a[-1]:.5f}, {second} {b[-1]:.5f}; largest per-step difference {max(gaps):.2e}"
    )
