"""What realistic sizes cost: a prompt-tuning and a prefix-tuning step on random-weight models
built from the configs of real checkpoints (values written below; nothing is downloaded).

Per row: seconds per step, the step's TFLOP/s against the same step's GEMMs timed alone in the
same run (matmuls of the step's shapes: forward and input-gradient, in the step's dtype), peak
resident memory during the steps (per process under `--shard fsdp`, where `torchrun` starts
this script twice), and `softprompt plan`'s prediction for the row (training/plan.py).

    python benchmarks/bench_scale.py --model qwen2.5-0.5b --method prompt [--checkpointing]
    python benchmarks/bench_scale.py --model qwen2.5-0.5b --shard fsdp   # starts 2 processes
    python benchmarks/bench_scale.py --device cuda --dtype bf16 ...      # on a GPU (issue 38)

One JSON line per row on stdout. Batch 8, prompt length 16, texts of 64 tokens, as in the
classification step: the loss reads the last position's two label-word logits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

CONFIGS = {  # from each checkpoint's config.json
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
        tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
        tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768,
    ),
    "llama-3.2-1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
        max_position_embeddings=131072,
    ),
    "llama-3.2-3b": dict(
        model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
        tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
        max_position_embeddings=131072,
    ),
}  # fmt: skip
BATCH, PROMPT, TEXT = 8, 16, 64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_backbone(name: str, dtype: torch.dtype, device: str):
    """A random-weight model of the named config as softprompt runs it (frozen, eval, segment
    attention on CPUs)."""
    import transformers

    from softprompt.kernels.attention import use_segment_attention
    from softprompt.models import Backbone

    values = dict(CONFIGS[name])
    config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.requires_grad_(False).eval()
    if device == "cpu":
        use_segment_attention(model)
    return Backbone(name=name, model=model, tokenizer=None, kind="causal")


def trainable(backbone, method: str) -> torch.nn.Parameter:
    """The prompt [L, d], or a prefix's keys and values [2, layers, kv_heads, L, head_dim]."""
    config = backbone.model.config
    if method == "prompt":
        shape = (PROMPT, config.hidden_size)
    else:
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        shape = (2, config.num_hidden_layers, config.num_key_value_heads, PROMPT, head_dim)
    return torch.nn.Parameter(torch.randn(shape, device=backbone.device) * 0.02)


def step_loss(backbone, method: str, weights: torch.nn.Parameter, batch: dict) -> torch.Tensor:
    """The classification step's loss through softprompt's steering (packing, fast paths)."""
    from softprompt.steering.prefix import PrefixKV
    from softprompt.steering.prompt import PromptSteering

    cast = weights.to(backbone.dtype)
    steering = PromptSteering(cast) if method == "prompt" else PrefixKV(cast[0], cast[1])
    hidden, first = steering.hidden(backbone, batch["ids"], batch["mask"], read=batch["read"])
    last = hidden[:, first + TEXT - 1]
    logits = backbone.head_logits(last, batch["labels_words"])
    return torch.nn.functional.cross_entropy(logits, batch["labels"])


class PeakRSS:
    """The highest resident set size while running (sampled every 20 ms from /proc)."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def random_batch(vocab: int, micro: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(10, vocab, (micro, TEXT), generator=generator)
    return {
        "ids": ids.to(device),
        "mask": torch.ones_like(ids).to(device),
        "read": torch.full((micro, 1), TEXT - 1, device=device),
        "labels_words": torch.tensor([11, 12], device=device),
        "labels": torch.randint(0, 2, (micro,), generator=generator).to(device),
    }


def step_flops(backbone, method: str, micro: int, checkpointing: bool) -> float:
    """The step's matmul FLOPs: every layer's linear layers forward and input-gradient (no
    weight gradients: frozen), attention's two products both ways, a replay with
    checkpointing; the head reads two vocabulary rows at one position (negligible)."""
    c = backbone.model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    d, inter = c.hidden_size, c.intermediate_size
    linear = 2 * (2 * d * q + 2 * d * kv + 3 * d * inter)
    seen = TEXT + PROMPT  # what each text position attends to at most (prompt + text)
    rows_tokens = micro * (TEXT + (PROMPT if method == "prompt" else 0))
    attention = 2 * 2 * micro * TEXT * seen * q
    forward = c.num_hidden_layers * (linear * rows_tokens + attention)
    return forward * (3 if checkpointing else 2)


def gemm_seconds(backbone, method: str, micro: int, checkpointing: bool, device: str) -> float:
    """The step's linear-layer GEMMs alone (same shapes and dtype), forward and input grad."""
    c = backbone.model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    d, inter = c.hidden_size, c.intermediate_size
    tokens = micro * (TEXT + (PROMPT if method == "prompt" else 0))
    shapes = [(d, q), (d, kv), (d, kv), (q, d), (d, inter), (d, inter), (inter, d)]
    total = 0.0
    for d_in, d_out in shapes:
        x = torch.randn(tokens, d_in, dtype=backbone.dtype, device=device)
        w = torch.randn(d_in, d_out, dtype=backbone.dtype, device=device)
        g = torch.randn(tokens, d_out, dtype=backbone.dtype, device=device)
        x @ w, g @ w.T  # warm
        _sync(device)
        start = time.perf_counter()
        for _ in range(3):
            x @ w
            g @ w.T
        _sync(device)
        total += (time.perf_counter() - start) / 3
    passes = 3 if checkpointing else 2
    return total * c.num_hidden_layers * passes / 2  # forward + input-grad per pass pair


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def planned_peak(backbone, args, world: int, overhead: int) -> int:
    """`softprompt plan`'s prediction for this row (training/plan.py)."""
    from softprompt.training.plan import GATHER_COPIES, SHARD_RUNTIME, Run, Shape, plan_memory

    kind = "cpu" if args.device == "cpu" else "cuda"
    run = Run(
        micro_batch=BATCH // world,
        text_length=TEXT,
        prompt_length=PROMPT,
        method=args.method,
        dtype_bytes=torch.finfo(DTYPES[args.dtype]).bits // 8,
        world=world,
        shard=args.shard == "fsdp",
        checkpointing=args.checkpointing,
        gather_copies=GATHER_COPIES[kind],
        shard_runtime=SHARD_RUNTIME[kind],
    )
    return plan_memory(Shape.of(backbone.model.config), run, overhead)["peak"]


def build_sharded(args, rank: int, world: int):
    """Build and wrap the model one process at a time (as `train.shard: fsdp` loads): two whole
    3B copies at once would not fit this machine; then settle the root together."""
    from softprompt.training.sharding import (
        checkpoint_layers,
        release_freed_memory,
        settle_root,
        wrap_model,
    )

    device = torch.device(args.device)
    backbone = None
    for turn in range(world):
        if turn == rank:
            backbone = build_backbone(args.model, DTYPES[args.dtype], args.device)
            if args.checkpointing:
                checkpoint_layers(backbone.model)
            wrap_model(backbone.model, world, device)
            release_freed_memory()
        torch.distributed.barrier()
    settle_root(backbone.model, device)
    return backbone


def measure(args, rank: int = 0, world: int = 1) -> dict:
    """One row: build, (shard,) warm up one step, time `--steps` steps with peak RSS."""
    from softprompt.training.sharding import checkpoint_layers, release_freed_memory

    release_freed_memory()
    with PeakRSS() as before:
        pass
    overhead = before.peak  # the runtime before any model
    backbone = build_sharded(args, rank, world) if args.shard == "fsdp" else None
    if backbone is None:
        backbone = build_backbone(args.model, DTYPES[args.dtype], args.device)
        if args.checkpointing:
            checkpoint_layers(backbone.model)
    release_freed_memory()
    with PeakRSS() as held:  # what the process holds with its model (shards) in place
        pass
    weights = trainable(backbone, args.method)
    optimizer = torch.optim.AdamW([weights], lr=1e-3)
    batch = random_batch(backbone.model.config.vocab_size, BATCH // world, args.device)

    def step() -> None:
        if args.shard == "fsdp":
            backbone.model.unshard()
        step_loss(backbone, args.method, weights, batch).backward()
        if args.shard == "fsdp":
            backbone.model.reshard()
            torch.distributed.all_reduce(weights.grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # the gradient stays allocated, as in training

    step()  # warm-up (allocates the optimizer state)
    _sync(args.device)
    if args.device.startswith("cuda"):  # device memory, not the host's: torch's allocator
        torch.cuda.reset_peak_memory_stats()
        overhead = 0
    with PeakRSS() as peak:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(args.device)
        seconds = (time.perf_counter() - start) / args.steps
    if args.device.startswith("cuda"):
        peak.peak = torch.cuda.max_memory_allocated()
    flops = step_flops(backbone, args.method, BATCH // world, args.checkpointing)
    gemm = gemm_seconds(backbone, args.method, BATCH // world, args.checkpointing, args.device)
    return {
        "rank": rank,
        "peak_bytes": peak.peak,
        "overhead_bytes": overhead,
        "held_bytes": held.peak,
        "seconds_per_step": seconds,
        "step_flops_per_s": flops / seconds,
        "gemm_flops_per_s": flops / gemm,  # the same FLOPs at the GEMMs' own speed
        "planned_bytes": planned_peak(backbone, args, world, overhead),
    }


def worker(args) -> None:
    """One process of a sharded row (under torchrun): rank 0 prints the processes' worst."""
    torch.distributed.init_process_group("gloo" if args.device == "cpu" else "nccl")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if args.device.startswith("cuda"):
        torch.cuda.set_device(rank)
        args.device = f"cuda:{rank}"
    result = measure(args, rank, world)
    results = [None] * world
    torch.distributed.all_gather_object(results, result)
    if rank == 0:
        worst = max(results, key=lambda r: r["peak_bytes"])
        slowest = max(r["seconds_per_step"] for r in results)
        print(json.dumps(row(args, {**worst, "seconds_per_step": slowest}, world)), flush=True)
    torch.distributed.destroy_process_group()


def row(args, result: dict, world: int) -> dict:
    measured, planned = result["peak_bytes"], result["planned_bytes"]
    return {
        "model": args.model,
        "method": args.method,
        "dtype": args.dtype,
        "checkpointing": args.checkpointing,
        "shard": args.shard,
        "processes": world,
        "steps": args.steps,
        "seconds_per_step": round(result["seconds_per_step"], 2),
        "step_tflops": round(result["step_flops_per_s"] / 1e12, 4),
        "gemm_tflops": round(result["gemm_flops_per_s"] / 1e12, 4),
        "peak_gib": round(measured / 2**30, 2),
        "held_gib": round(result["held_bytes"] / 2**30, 2),  # model in place, before a step
        "overhead_gib": round(result["overhead_bytes"] / 2**30, 2),
        "planned_gib": round(planned / 2**30, 2),
        "plan_error": round(planned / measured - 1, 3),
    }


PAPER = {  # Llama-3.1 8B and 70B config.json values, for the plan on paper (docs/scale.md)
    "llama-3.1-8b": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "llama-3.1-70b": dict(
        model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
        tie_word_embeddings=False,
    ),
}  # fmt: skip


def paper(device_gib: float = 80.0, overhead_gib: float = 2.0) -> None:
    """The plan for 8B and 70B in bf16 on 1, 2, 4, 8 GPUs: the largest micro-batch of texts
    of each length that fits, with and without checkpointing (a Markdown table)."""
    import transformers

    from softprompt.training.plan import GIB, Run, Shape, plan_memory

    print("| model | GPUs | text tokens | weights/GPU GiB | largest micro-batch (no ckpt / ckpt) |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in PAPER.items():
        values = dict(values)
        shape = Shape.of(transformers.AutoConfig.for_model(values.pop("model_type"), **values))
        for world in (1, 2, 4, 8):
            for text in (256, 1024, 4096):
                fits = []
                for checkpointing in (False, True):
                    best = 0
                    for micro in (1, 2, 4, 8, 16, 32, 64):
                        run = Run(
                            micro,
                            text,
                            PROMPT,
                            dtype_bytes=2,
                            world=world,
                            shard=world > 1,
                            checkpointing=checkpointing,
                        )
                        peak = plan_memory(shape, run, int(overhead_gib * GIB))["peak"]
                        best = micro if peak <= device_gib * GIB else best
                    fits.append("-" if not best else f"{best}+" if best == 64 else str(best))
                weights = shape.parameters * 2 / world / GIB
                print(f"| {name} | {world} | {text} | {weights:.1f} | {' / '.join(fits)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="qwen2.5-0.5b")
    parser.add_argument("--method", choices=["prompt", "prefix"], default="prompt")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--shard", choices=["none", "fsdp"], default="none")
    parser.add_argument("--processes", type=int, default=2, help="with --shard fsdp")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--paper", action="store_true", help="the 8B/70B plan on 80 GB GPUs")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    if args.paper:
        paper()
    elif args.worker:
        worker(args)
    elif args.shard == "fsdp":
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc_per_node", str(args.processes), __file__, *sys.argv[1:], "--worker"]
        subprocess.run(launcher, check=True)
    else:
        print(json.dumps(row(args, measure(args), 1)), flush=True)


if __name__ == "__main__":
    main()
