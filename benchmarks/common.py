"""Helpers shared by the benchmarks: the machine description every benchmark prints, block
alternation of contenders within one process, the ratio line, and the matmul limits that
achieved FLOP/s are compared with.

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
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
# the plain reference implementations the benchmarks race against live with the tests
sys.path.insert(0, str(ROOT / "tests"))
# CPU features that decide matmul speed in fp32 / bf16 (x86: AVX-512, its bf16 ops, AMX tiles).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
# untimed calls before a matmul's timed blocks: kernel selection, allocation, caches, clocks
WARMUP_CALLS = 3


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


def default_precisions(names: list[str]) -> list[str]:
    """`names` ([the fp32 name, the bf16 name]) where this machine computes bf16 natively, else
    the fp32 one alone, saying so: emulated bf16 runs many times slower than fp32 (an AVX2 CPU:
    0.3 against 154 GFLOP/s for a 2048² matmul) and would take an hour to say nothing useful."""
    from softprompt.models.precision import native_bf16

    if native_bf16(device()):
        return names
    print(f"  {names[1]}: skipped, not native on this machine (ask for it by name to run it)")
    return names[:1]


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


class Gemm(NamedTuple):
    """One matmul shape of a training step: [m, k] @ [k, n], `count` times per step. `stored_t`:
    the weight is stored [n, k] and read transposed (nn.Linear's forward, x @ W^T); otherwise
    it is read as stored (the input gradient, grad_y @ W)."""

    m: int
    k: int
    n: int
    count: int
    stored_t: bool


def prompt_tuning_gemms(config, tokens: int, head: bool = False) -> list[Gemm]:
    """The GEMMs one prompt-tuning step runs through a Llama-style model (q/k/v/o, gate/up/down
    per layer, the LM head if `head`) on `tokens` positions: each weight's forward x @ W^T and
    its input gradient grad_y @ W. No weight-gradient GEMMs: the weights are frozen. Their
    FLOPs add up to the 4N*tokens convention (N = the listed weights). ValueError for a config
    without intermediate_size / num_key_value_heads."""
    text = config.get_text_config()
    if None in (getattr(text, key, None) for key in ("intermediate_size", "num_key_value_heads")):
        raise ValueError(f"{text.model_type} is not a Llama-style config")
    d, mlp, layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    head_dim = getattr(text, "head_dim", None) or d // text.num_attention_heads
    q, kv = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
    # each weight as nn.Linear stores it, [out, in], and how many of it a step passes through:
    # q; k and v; o; gate and up; down
    weights = [(q, d, layers), (kv, d, 2 * layers), (d, q, layers), (mlp, d, 2 * layers)]
    weights.append((d, mlp, layers))
    if head:
        weights.append((text.vocab_size, d, 1))
    forward = [Gemm(tokens, inp, out, count, True) for out, inp, count in weights]
    return forward + [Gemm(tokens, out, inp, count, False) for out, inp, count in weights]


def square_gemm(size: int) -> list[Gemm]:
    """The classic limit: one size x size @ size x size matmul."""
    return [Gemm(size, size, size, 1, False)]


SHAPE_BUDGET_S = 5.0  # timed seconds per shape at most, after the first block
BLOCK_S = 0.5  # a block holds fewer calls where one call takes longer than BLOCK_S / per_block


def gemm_seconds(gemm: Gemm, dtype: torch.dtype, blocks: int, per_block: int) -> float:
    """Seconds of one call of `gemm` on the training device, warm: WARMUP_CALLS untimed calls,
    then up to `blocks` timed blocks of up to `per_block` calls; the best block counts (a limit
    is the best the machine does, not a typical run). Slow shapes (bf16 emulated on a CPU
    without it) get fewer calls and blocks, so that no shape takes minutes."""
    x = torch.randn(gemm.m, gemm.k, dtype=dtype, device=device())
    shape = (gemm.n, gemm.k) if gemm.stored_t else (gemm.k, gemm.n)
    w = torch.randn(shape, dtype=dtype, device=x.device)
    weight = w.T if gemm.stored_t else w
    first = timed(lambda: x @ weight)[1]
    for _ in range(WARMUP_CALLS - 1 if first < BLOCK_S else 0):
        x @ weight
    calls = max(1, min(per_block, int(BLOCK_S / max(first, 1e-9))))
    best, spent = float("inf"), 0.0
    for _ in range(blocks):
        seconds = timed(lambda: [x @ weight for _ in range(calls)])[1]
        best, spent = min(best, seconds / calls), spent + seconds
        if spent > SHAPE_BUDGET_S:
            break
    return best


def total_flops(gemms: list[Gemm]) -> int:
    """FLOPs of running every GEMM of the list its count of times."""
    return sum(g.count * 2 * g.m * g.k * g.n for g in gemms)


def gemm_flops(gemms: list[Gemm], dtype: torch.dtype, blocks: int, per_block: int) -> float:
    """Combined FLOP/s of a step's `gemms`: their total FLOPs over their total best time (each
    shape timed warm by gemm_seconds, weighted by its count)."""
    flops = total_flops(gemms)
    return flops / sum(g.count * gemm_seconds(g, dtype, blocks, per_block) for g in gemms)


def matmul_limits(
    config, token_counts, dtype: torch.dtype, size: int, blocks: int, per_block: int, head=False
) -> dict[str | int, float]:
    """FLOP/s limits in `dtype` to set achieved FLOP/s against, each measured warm and best of
    blocks (gemm_seconds): "square", the size x size matmul, and per count in `token_counts`
    the model-shape limit, the step's own GEMMs (prompt_tuning_gemms) at that many positions."""
    limits = {"square": gemm_flops(square_gemm(size), dtype, blocks, per_block)}
    for tokens in sorted(set(token_counts)):
        gemms = prompt_tuning_gemms(config, tokens, head)
        limits[tokens] = gemm_flops(gemms, dtype, blocks, per_block)
    return limits


def gemm_pass(gemms: list[Gemm], dtype: torch.dtype) -> Callable[[], None]:
    """A call that runs every GEMM of a step once per its count, on inputs made here: the
    step's matmul work alone. Timed in alternation with the step itself (alternate), it gives
    the step's floor under the same machine drift as the step, which a limit timed before or
    after the steps does not (this machine's matmul rate wanders by 20% over minutes)."""
    operands = []
    for gemm in gemms:
        x = torch.randn(gemm.m, gemm.k, dtype=dtype, device=device())
        shape = (gemm.n, gemm.k) if gemm.stored_t else (gemm.k, gemm.n)
        w = torch.randn(shape, dtype=dtype, device=x.device)
        operands.append((x, w.T if gemm.stored_t else w, gemm.count))

    def run() -> None:
        for x, weight, count in operands:
            for _ in range(count):
                x @ weight

    return run


def limits_line(dtype: torch.dtype, size: int, limits: dict[str | int, float]) -> str:
    """'bfloat16 limits: 2048x2048 matmul x GFLOP/s; model shapes at t tokens y GFLOP/s, ...'"""
    shapes = [f"at {t} tokens {f / 1e9:.1f} GFLOP/s" for t, f in limits.items() if t != "square"]
    return (
        f"{str(dtype).removeprefix('torch.')} limits: {size}x{size} matmul "
        f"{limits['square'] / 1e9:.1f} GFLOP/s; model shapes {', '.join(shapes) or 'n/a'}"
    )
