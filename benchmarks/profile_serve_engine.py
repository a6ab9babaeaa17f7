"""Where the serving engine's time goes, piece by piece (the evidence behind the serving
section of BENCHMARKS.md): a request's prefill on an idle engine (per adapter kind) against
the same prompt joining a running step of 15 rows (what the step costs more), a decoding step
of 1 and of 16 rows, and torch.profiler's top operators of a 16-row mixed step.

It drives an `Engine` by hand (its `_admit` and `_step`, on this thread), with the adapters
and prompts of bench_serve.py. The engine is not changed.

Run: PYTHONPATH=src .venv/bin/python benchmarks/profile_serve_engine.py [--threads 1]
[--outside 16 64] (only the time per decoding step outside the model, at 16 and 64 rows)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import machine

from softprompt.decoding.engine import Engine, Job
from softprompt.decoding.options import SamplingOptions
from softprompt.models import load_backbone
from softprompt.serving.adapters import Adapters
from softprompt.steering.base import NoSteering

ROWS = 16
WARM_STEPS = 20  # decoding steps before timing: a typical cache width


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def job(steering, ids: list[int]) -> Job:
    return Job(steering, ids, SamplingOptions(max_new_tokens=10**6, greedy=True), lambda *_: None)


def submit(engine: Engine, steering, ids: list[int]) -> None:
    engine.submit(job(steering, ids))
    engine._admit()


def prefills(backbone, adapters: dict, prompts) -> None:
    """One prompt's prefill under each adapter: alone, and as the 16th row joining a step."""
    for name, adapter in adapters.items():

        def alone(steering=adapter.steering) -> None:
            engine = Engine(backbone)
            submit(engine, steering, prompts[0])
            engine._step()

        seconds = median_seconds(alone, 5)
        print(
            f"prefill alone, {name}: {seconds * 1e3:.0f} ms "
            f"({len(prompts[0])} prompt tokens + {adapter.steering.length} steering)"
        )
    running = running_engine(backbone, [NoSteering()] * (ROWS - 1), prompts)
    plain = median_seconds(running._step, 5)
    joined = []
    for _ in range(5):
        engine = running_engine(backbone, [NoSteering()] * (ROWS - 1), prompts)
        submit(engine, NoSteering(), prompts[0])
        started = time.perf_counter()
        engine._step()
        joined.append(time.perf_counter() - started)
    extra = statistics.median(joined) - plain
    print(
        f"a step of {ROWS - 1} running rows: {plain * 1e3:.0f} ms; with a bare prompt joining "
        f"({len(prompts[0])} tokens): {statistics.median(joined) * 1e3:.0f} ms, "
        f"so its prefill costs {extra * 1e3:.0f} ms there"
    )


def running_engine(backbone, steerings: list, prompts) -> Engine:
    engine = Engine(backbone, max_batch=ROWS)
    for steering, ids in zip(steerings, prompts):
        submit(engine, steering, ids)
    for _ in range(WARM_STEPS):
        engine._step()
    return engine


def steps(backbone, adapters: dict, prompts) -> Engine:
    """Decoding step times; returns the 16-row mixed engine for the profile."""
    names = list(adapters)
    mixed = [adapters[names[i % len(names)]].steering for i in range(ROWS)]
    cases = {"1 bare row": [NoSteering()], f"{ROWS} mixed rows": mixed}
    cases[f"{ROWS} bare rows"] = [NoSteering()] * ROWS
    engines = {}
    for label, steerings in cases.items():
        engine = running_engine(backbone, steerings, prompts)
        seconds = median_seconds(engine._step, 7)
        width = max(r.length for r in engine.rows)
        print(f"decoding step, {label}, longest row {width} columns: {seconds * 1e3:.0f} ms")
        engines[label] = engine
    return engines[f"{ROWS} mixed rows"]


def profile_step(engine: Engine) -> None:
    from torch.profiler import ProfilerActivity, profile

    count = 5
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(count):
            engine._step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"torch.profiler, {count} steps of {ROWS} mixed rows, top operators by own time:")
    for event in events[:6]:
        print(
            f"  {event.key}: {event.self_cpu_time_total / total:.1%}, "
            f"{event.self_cpu_time_total / 1e3 / count:.1f} ms per step, "
            f"{event.count // count} calls per step"
        )


def outside_model(backbone, rows: int, steps_timed: int = 8) -> None:
    """Per decoding step of `rows` bare rows: wall time, the model's forward, and the rest
    (scheduling, sampling, detokenising, events: the engine's own Python)."""
    engine = Engine(backbone, max_batch=rows, queue_size=rows)
    for i in range(rows):
        submit(engine, NoSteering(), backbone.tokenizer(f"review {i}: the film was").input_ids)
    for _ in range(WARM_STEPS // 4):
        engine._step()
    model, spent = backbone.model, [0.0]
    forward = model.forward

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    model.forward = timed
    try:
        started = time.perf_counter()
        for _ in range(steps_timed):
            engine._step()
        wall = (time.perf_counter() - started) / steps_timed
    finally:
        del model.forward
    inside = spent[0] / steps_timed
    print(
        f"decoding step, {rows} bare rows: {wall * 1e3:.1f} ms, the model "
        f"{inside * 1e3:.1f} ms, outside the model {(wall - inside) * 1e3:.1f} ms "
        f"({(wall - inside) / wall:.0%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--outside", type=int, nargs="*", metavar="ROWS",
        help="only the time per step outside the model, at these batch sizes (e.g. 16 64)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    if args.outside:  # runs on the older engine too (no bench_serve import)
        backbone = load_backbone("smollm2-135m")
        with torch.no_grad():
            for rows in args.outside:
                outside_model(backbone, rows)
        return
    import bench_serve  # the adapters and prompts of the serving benchmark

    watch = bench_serve.CpuWatch()
    backbone = load_backbone(bench_serve.MODEL)
    with tempfile.TemporaryDirectory(prefix="profile-serve-") as tmp:
        names = bench_serve.write_adapters(backbone, Path(tmp), 0)
        adapters = Adapters(backbone, bench_serve.MODEL, [], Path(tmp))
    everyone = [bench_serve.MODEL, *names]
    requests = bench_serve.plan(ROWS, everyone, 0, (16, 64))
    prompts = [backbone.tokenizer(r.text).input_ids for r in requests]
    with torch.no_grad():
        prefills(backbone, adapters, prompts)
        profile_step(steps(backbone, adapters, prompts))
    others, _ = watch.cores()
    print(f"other processes used {others:.2f} cores on average meanwhile")


if __name__ == "__main__":
    main()
