"""The serving engine's memory and fairness rows (issue #34), on the bundled model: run the
same script on the engine before (a checkout of the older commit on PYTHONPATH) and after.

- `prefix`: KV memory held with 16 rows on one 256-token prefix, against one prefix plus the
  rows' own tokens (the least any store can hold);
- `gap`: one 2,000-token prompt joining 15 running streams: the streams' gaps between tokens
  (one step each) from 5 steps before it joins to 5 steps after its first token; largest
  against median;
- `peak`: one 4,000-token request among 15 short ones: the KV store's peak bytes and the
  process's peak resident memory (run each row in its own process for that one).

It drives an `Engine` by hand (`submit`, `_admit`, `_step` on this thread), greedy, and reads
the store's size from either engine (`pool`: blocks; `cache`: the older slot store).

Run: PYTHONPATH=src .venv/bin/python benchmarks/bench_serve_engine.py ROW [--prefill-chunk N]
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import resource
import statistics
import time

import torch
from common import machine

from softprompt.decoding.engine import Engine, Job
from softprompt.decoding.options import SamplingOptions
from softprompt.models import load_backbone
from softprompt.steering.base import NoSteering
from softprompt.steering.prefix import PrefixKV, prefix_geometry

MODEL = "smollm2-135m"
WORDS = ["the", "film", "was", "long", "but", "the", "actors", "were", "good", "and", "music"]


def text_of(tokens: int, seed: int) -> str:
    """A prompt of about `tokens` words (each one or two tokens)."""
    return " ".join(WORDS[(seed + i) % len(WORDS)] for i in range(tokens))


def make_engine(backbone, rows: int, chunk: int | None) -> Engine:
    options = {"max_batch": rows, "queue_size": rows}
    if chunk is not None and "prefill_chunk" in inspect.signature(Engine).parameters:
        options["prefill_chunk"] = chunk
    return Engine(backbone, **options)


def submit(engine: Engine, steering, ids: list[int], tokens: int, emit=None) -> None:
    options = SamplingOptions(max_new_tokens=tokens, greedy=True)
    engine.submit(Job(steering, ids, options, emit or (lambda *_: None)))


def step(engine: Engine) -> None:
    engine._admit()
    engine._step()


def busy(engine: Engine) -> bool:
    waiting = engine.scheduler.busy if hasattr(engine, "scheduler") else engine.joining
    return bool(engine.running or waiting or engine.pending)


def held(engine: Engine) -> tuple[int, int]:
    """(token columns, bytes) the KV store holds now."""
    if hasattr(engine, "pool"):
        pool = engine.pool
        return pool.used * pool.block_size, pool.used * pool.bytes_per_block()
    cache = engine.cache
    columns = cache.slots * cache.capacity
    element = torch.tensor([], dtype=cache.dtype).element_size()
    return columns, 2 * cache.layers * cache.heads * cache.head_dim * element * columns


def row_lengths(engine: Engine) -> list[int]:
    if hasattr(engine, "pool"):
        return [r.length for r in engine.rows]
    return engine.cache.lengths[: engine.cache.rows].tolist()


def prefix_row(backbone, args) -> None:
    layers, heads, dim = prefix_geometry(backbone.model)
    generator = torch.Generator().manual_seed(0)
    shape = (layers, heads, 256, dim)
    prefix = PrefixKV(
        torch.randn(shape, generator=generator) * 0.1, torch.randn(shape, generator=generator)
    )
    engine = make_engine(backbone, 16, args.prefill_chunk)
    for i in range(16):
        submit(engine, prefix, backbone.tokenizer(text_of(8 + i, i)).input_ids, 16)
    worst = (0.0, 0, 0)
    while busy(engine):
        step(engine)
        lengths = row_lengths(engine)
        if len(lengths) == 16:
            tokens, _ = held(engine)
            least = 256 + sum(n - 256 for n in lengths)
            worst = max(worst, (tokens / least, tokens, least))
    ratio, tokens, least = worst
    print(
        f"prefix: 16 rows on one 256-token prefix hold {tokens} token columns of keys/values; "
        f"one prefix + the rows' own tokens = {least}: {ratio:.2f}x (worst step)"
    )


def gap_row(backbone, args) -> None:
    engine = make_engine(backbone, 16, args.prefill_chunk)
    for i in range(15):
        submit(engine, NoSteering(), backbone.tokenizer(text_of(12, i)).input_ids, 10**4)
    for _ in range(3):
        step(engine)  # warm
    stamps = [time.perf_counter()]
    for _ in range(5):
        step(engine)
        stamps.append(time.perf_counter())
    long = backbone.tokenizer(text_of(2000, 3)).input_ids[:2000]
    heard: list[object] = []  # the long request's first event: its prefill is done
    submit(engine, NoSteering(), long, 10**4, lambda *event: heard.append(event))
    streams = engine.running
    while not heard:
        step(engine)
        stamps.append(time.perf_counter())
    for _ in range(5):
        step(engine)
        stamps.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    median = statistics.median(gaps)
    print(
        f"gap: a {len(long)}-token prompt joining {streams} streams (prefill chunk "
        f"{args.prefill_chunk}): {len(gaps)} steps, median gap {median * 1e3:.0f} ms, largest "
        f"{max(gaps) * 1e3:.0f} ms = {max(gaps) / median:.1f}x the median"
    )


def peak_row(backbone, args) -> None:
    engine = make_engine(backbone, 16, args.prefill_chunk)
    long = backbone.tokenizer(text_of(4000, 5)).input_ids[:4000]
    submit(engine, NoSteering(), long, 8)
    for i in range(15):
        submit(engine, NoSteering(), backbone.tokenizer(text_of(12, i)).input_ids, 8)
    most = (0, 0)
    started = time.perf_counter()
    while busy(engine):
        step(engine)
        most = max(most, held(engine), key=lambda x: x[1])
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        f"peak: one {len(long)}-token request among 15 of ~14 tokens, 8 new tokens each: KV "
        f"store at most {most[1] / 2**20:.0f} MiB ({most[0]} token columns); process peak "
        f"resident {rss:.0f} MiB; {seconds:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("row", choices=["prefix", "gap", "peak"])
    parser.add_argument("--prefill-chunk", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    backbone = load_backbone(MODEL)
    with torch.no_grad():
        {"prefix": prefix_row, "gap": gap_row, "peak": peak_row}[args.row](backbone, args)


if __name__ == "__main__":
    main()
