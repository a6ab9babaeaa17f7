"""Where the serving engine's time goes, piece by piece (the evidence behind the serving
section of BENCHMARKS.md): a request's prefill on an idle engine (per adapter kind) against
the same prompt joining a running step of 15 rows (what the step costs more), a decoding step
of 1 and of 16 rows, torch.profiler's top operators of a 16-row mixed step, and the time per
step spent outside the model at 16 and 64 rows (`--outside`): the step's wall time less the
model's forward, and within it the picking of every row's token and its text (the step's
update, `decoding.update`, or `Engine._advance` in the engine before the schedule -> execute
-> update shape: sampling, log-probabilities, detokenizing, stop strings), greedy and
sampled (temperature, top-k, top-p and both penalties); and the same picking without the
model (`--picking`): rows whose text is already 32 or 512 tokens long pick a token from random
logits of the model's vocabulary and add it to their text, which shows how the cost grows with
a row's length. The script runs against the code before the batched sampler too (it uses
`RowSampler.pick` per row where `sample_rows` is missing; with that checkout's bench_serve.py
beside it, which this script imports for its prompts), so both sides come from the same
commands.

It drives an `Engine` by hand (its `_admit` and `_step`, on this thread), with the adapters
and prompts of bench_serve.py. The engine is not changed.

Run: PYTHONPATH=src .venv/bin/python benchmarks/profile_serve_engine.py [--threads 1]
     [--outside-only] [--outside-rows 16 64] [--outside-steps 8] [--picking]
     [--outside 16 64] (the same as --outside-only --outside-rows 16 64)
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


SAMPLED = SamplingOptions(
    max_new_tokens=10**6, temperature=0.8, top_k=50, top_p=0.9, presence_penalty=0.5,
    frequency_penalty=0.3, seed=1,
)  # fmt: skip
GREEDY = SamplingOptions(max_new_tokens=10**6, greedy=True)


def outside_model(backbone, prompts, rows: int, options: SamplingOptions, steps: int) -> str:
    """Per decoding step of `rows` rows (no EOS, so none leaves): the median wall time, the
    model's forward (timed by hooks on the model), the rest, and the picking part of it."""
    engine = Engine(backbone, max_batch=rows, queue_size=rows)
    engine.eos = set()  # rows run on: every timed step has all of them
    for i in range(rows):
        seed = i if not options.is_greedy else None
        engine.submit(
            Job(NoSteering(), prompts[i % len(prompts)], options, lambda *_: 0, seed=seed)
        )
    engine._admit()
    for _ in range(WARM_STEPS):
        engine._step()
    clock = {"model": 0.0, "advance": 0.0}
    started = {}
    model = backbone.model
    hooks = [
        model.register_forward_pre_hook(lambda *_: started.update(model=time.perf_counter())),
        model.register_forward_hook(
            lambda *_: clock.update(model=clock["model"] + time.perf_counter() - started["model"])
        ),
    ]
    undo = _time_picking(engine, clock)
    totals, models, advances = [], [], []
    try:
        for _ in range(steps):
            clock.update(model=0.0, advance=0.0)
            begun = time.perf_counter()
            engine._step()
            totals.append(time.perf_counter() - begun)
            models.append(clock["model"])
            advances.append(clock["advance"])
    finally:
        for hook in hooks:
            hook.remove()
        undo()
    rest = [t - m for t, m in zip(totals, models)]
    kind = "greedy" if options.is_greedy else "sampled"
    return (
        f"{rows} rows, {kind}: step {statistics.median(totals) * 1e3:.1f} ms, model "
        f"{statistics.median(models) * 1e3:.1f} ms, outside the model "
        f"{statistics.median(rest) * 1e3:.2f} ms, of which picking tokens and text "
        f"{statistics.median(advances) * 1e3:.2f} ms (median of {steps} steps)"
    )


def _time_picking(engine: Engine, clock: dict):
    """Add the time of each step's picking of tokens and text to clock["advance"]: the
    engine's `update` (`decoding.update`), or `Engine._advance` in the engine before it.
    Returns what undoes the timing."""
    from softprompt.decoding import engine as engine_module

    older = hasattr(engine, "_advance")
    owner, name = (engine, "_advance") if older else (engine_module, "update")
    original = getattr(owner, name)

    def timed(*args):
        begun = time.perf_counter()
        try:
            return original(*args)
        finally:
            clock["advance"] += time.perf_counter() - begun

    setattr(owner, name, timed)
    return lambda: setattr(owner, name, original)


def picking(tokenizer, vocab: int, rows: int, length: int, options, steps: int) -> str:
    """Median time of one step's picking for `rows` rows of `length` tokens each: a token per
    row from random logits, added to the row's text, the text that became final taken."""
    from softprompt.decoding import sampler as sampler_module
    from softprompt.decoding.sampler import RowSampler
    from softprompt.decoding.text import RowText

    device = torch.device("cpu")
    source = torch.Generator().manual_seed(0)
    samplers = [RowSampler(options, None if options.is_greedy else i, device) for i in range(rows)]
    prompt = tokenizer("The film was long, and the ending was").input_ids
    texts = [_text_of_length(RowText, tokenizer, prompt, length, i) for i in range(rows)]
    batched = getattr(sampler_module, "sample_rows", None)
    times = []
    for _ in range(steps + 1):  # the first step warms up, untimed
        logits = torch.randn(rows, vocab, generator=source) * 4
        begun = time.perf_counter()
        if batched is not None:
            tokens = batched(samplers, logits)
        else:
            tokens = [s.pick(row, t.tokens) for s, row, t in zip(samplers, logits, texts)]
        for text, token in zip(texts, tokens):
            text.add(token)
            text.take_final()
        times.append(time.perf_counter() - begun)
    kind = "greedy" if options.is_greedy else "sampled"
    median = statistics.median(times[1:])
    return f"{rows} rows of {length} tokens, {kind}: {median * 1e3:.2f} ms (median of {steps})"


def _text_of_length(row_text, tokenizer, prompt: list[int], length: int, seed: int):
    """A row's text that already holds `length` tokens (of English text)."""
    import bench_serve

    words = bench_serve.texts()
    ids = []
    while len(ids) < length:
        ids += tokenizer(" " + words[(seed + len(ids)) % len(words)]).input_ids
    try:
        text = row_text(tokenizer, (), prompt)
    except TypeError:  # before: no prompt context
        text = row_text(tokenizer, ())
        text.tokens = ids[: length - 1]  # one decode of the whole row instead of `length`
        ids = ids[length - 1 :]
    for token in ids[: length - len(text.tokens)]:
        text.add(token)
    text.take_final()
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--outside-only", action="store_true", help="only the outside-model rows")
    parser.add_argument("--outside-rows", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--outside-steps", type=int, default=8)
    parser.add_argument("--picking", action="store_true", help="only the picking without the model")
    parser.add_argument(
        "--outside", type=int, nargs="+", metavar="ROWS",
        help="only the outside-model rows, at these batch sizes (--outside-only --outside-rows)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.outside:
        args.outside_only, args.outside_rows = True, args.outside
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    import bench_serve  # the adapters and prompts of the serving benchmark

    watch = bench_serve.CpuWatch()
    backbone = load_backbone(bench_serve.MODEL)
    if args.picking:
        vocab = backbone.model.get_input_embeddings().num_embeddings
        print(f"picking tokens and text without the model ({vocab} tokens):")
        for rows in args.outside_rows:
            for length in (32, 512):
                for options in (GREEDY, SAMPLED):
                    line = picking(backbone.tokenizer, vocab, rows, length, options, 9)
                    print("  " + line, flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="profile-serve-") as tmp:
        names = bench_serve.write_adapters(backbone, Path(tmp), 0)
        adapters = Adapters(backbone, bench_serve.MODEL, [], Path(tmp))
    everyone = [bench_serve.MODEL, *names]
    requests = bench_serve.plan(max(ROWS, *args.outside_rows), everyone, 0, (16, 64))
    prompts = [backbone.tokenizer(r.text).input_ids for r in requests]
    with torch.no_grad():
        if not args.outside_only:
            prefills(backbone, adapters, prompts)
            profile_step(steps(backbone, adapters, prompts[:ROWS]))
        print("time per decoding step outside the model:")
        for rows in args.outside_rows:
            for options in (GREEDY, SAMPLED):
                print("  " + outside_model(backbone, prompts, rows, options, args.outside_steps))
    others, _ = watch.cores()
    print(f"other processes used {others:.2f} cores on average meanwhile")


if __name__ == "__main__":
    main()
