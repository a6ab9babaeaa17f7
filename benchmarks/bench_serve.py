"""Serving: `softprompt serve` (continuous batching of soft prompts, prefixes and the bare model
in one batch) against one request at a time and against PEFT serving each adapter in turn;
the cost of mixed steering in the engine's decoding step; resident memory after 100 and 1,000
requests. Targets: server >= 4x one-at-a-time and >= 1.5x PEFT-in-turn tokens/s; decoding 16
mixed rows within 15% of 16 bare rows; RSS after 1,000 requests within 10% of after 100; the
same requests with `logprobs: 5` cost <= 1.2x the time per token.

Everything runs in this one process on the bundled SmolLM2-135M (float32): the in-process
`Server` on 127.0.0.1 (a free port), its clients in threads, and the contenders in turn.
Adapters are made here, seeded: random soft prompts of lengths 8 and 16 (at the scale of the
model's token embeddings) and random prefixes of lengths 8 and 16, served beside the bare
model: 5 names. Requests: seeded prompts (the sample sentiment task's training texts), a
seeded 16-64 new tokens each, greedy, the 5 names round robin (1/5 each), shuffled.

1. memory: a fresh server answers 100 short requests (the first 3 words of a text, 4 new
   tokens, mixed names, 16 clients), then 900 more; the process's RSS (/proc/self/statm)
   after 100 and after 1,000.
2. throughput, in `--rounds` rounds, each on its own block of the request plan (every name
   alike in each block), the contenders alternating (the order reverses every round); by
   default 2 rounds of 60 requests, 12 per name:
   - server: `--clients` threads, each with its own httpx2 client, take the round's requests
     one after another (closed loop) from /v1/completions; tokens = the usage's
     completion_tokens; wall time from the first request sent to the last answer; latency
     per request as the client sees it.
   - the server with logprobs: the same requests, each asking for `logprobs: 5`.
   - one at a time: every `--alone-every`-th request of each name in the round through
     `softprompt.generate(backbone, [text], steering, greedy)`; its tokens are the server's
     completion_tokens for that request (the same greedy decoding; the texts are compared).
   - PEFT in turn: PEFT cannot batch different prompt-learning adapters together, so each
     adapter (exported with `export_peft`, loaded with `PeftModel.from_pretrained` on one
     sdpa copy of the model) runs its requests in left-padded batches of at most
     `--max-batch` through `PeftModel.generate`, the bare requests through the base model's
     `generate`, one adapter after another. A batch runs to its longest request's max tokens;
     only each request's own tokens (up to its max tokens and its first EOS) count as useful.
3. steering cost: `--max-batch` jobs submitted straight to an `Engine` (not started until all
   are queued, so all prefills come first, in the first step), all with `--decode-tokens` new
   tokens: mixed (the 5 names round robin) against all bare, the same prompts, alternating for
   `--decode-rounds` rounds. The engine's `on_step` hook stamps each decoding step; the time
   between two stamps with all rows running is one full step (the model's forward, picking
   and decoding the tokens); tokens/s = rows / median step.

While each phase runs, the CPU time of other processes is read from /proc/stat (all CPUs'
busy time minus this process's): numbers taken on a busy machine are slower, and the table
says how busy it was.

Run: PYTHONPATH=src .venv/bin/python benchmarks/bench_serve.py [--requests 120] [--rounds 2]
     [--clients 16] [--max-batch 16] [--new-tokens 16 64] [--alone-every 6]
     [--decode-tokens 32] [--decode-rounds 2] [--memory-requests 100 1000]
     [--memory-tokens 4] [--seed 0] [--threads N] [--json]
With the defaults it took 706 s on 2 AMD EPYC cores with `--threads 1` while other processes
held one core (BENCHMARKS.md, "Serving"); with torch's 2 threads on such a busy machine every
operator waits for the descheduled thread and a run takes hours: use --threads 1 there.
Small size (checks that it runs; timings mean nothing): --requests 10 --rounds 1
     --alone-every 5 --decode-tokens 4 --decode-rounds 1 --memory-requests 16 32
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import torch
from common import ROOT, machine

from softprompt.decoding.engine import Engine, Failed, Finished, Job
from softprompt.generation import SamplingOptions, generate
from softprompt.interop.peft import export_peft
from softprompt.methods.artifact import model_record
from softprompt.methods.prefix import SavedPrefix
from softprompt.methods.prompt import SoftPrompt
from softprompt.models import Backbone, load_backbone
from softprompt.serving.server import Server
from softprompt.steering.base import NoSteering
from softprompt.steering.prefix import PrefixKV, prefix_geometry

MODEL = "smollm2-135m"
LENGTHS = (8, 16)
TIMEOUT_S = 300  # per HTTP request
MEMORY_WORDS = 3  # the memory phase's prompts: the first words of each text (short requests)
TARGETS = {
    "vs_alone": 4.0,
    "vs_peft": 1.5,
    "mixed_vs_bare": 0.85,
    "rss_ratio": 1.10,
    "logprobs_cost": 1.2,
}
LOWER_IS_BETTER = ("rss_ratio", "logprobs_cost")


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --- the machine while it runs ------------------------------------------------------------


class CpuWatch:
    """CPU time of other processes (in cores, averaged) and this one's, over a phase."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.started = time.perf_counter()
        self.busy, self.own = _busy_ticks(), _own_ticks()

    def cores(self) -> tuple[float, float]:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        busy, own = _busy_ticks() - self.busy, _own_ticks() - self.own
        return max(busy - own, 0) / self.tick / seconds, own / self.tick / seconds


def _busy_ticks() -> int:
    """Non-idle time of all CPUs in clock ticks (user nice system irq softirq steal)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0
    return sum(values[:3]) + sum(values[5:8])


def _own_ticks() -> int:
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def rss_bytes() -> int:
    """Resident memory of this process (the in-process server's)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil  # not Linux: psutil if it is there

        return psutil.Process().memory_info().rss


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# --- adapters and requests ----------------------------------------------------------------


def write_adapters(backbone: Backbone, folder: Path, seed: int) -> list[str]:
    """Random soft prompts and prefixes of LENGTHS for `backbone`; returns their names."""
    generator = torch.Generator().manual_seed(seed)
    models = [model_record(backbone)]
    scale = float(backbone.model.get_input_embeddings().weight.std())
    names = []
    for length in LENGTHS:
        embedding = torch.randn(length, backbone.hidden_size, generator=generator) * scale
        SoftPrompt(embedding, models=models, task={}).save(folder / f"prompt{length}.safetensors")
        names.append(f"prompt{length}")
    layers, heads, head_dim = prefix_geometry(backbone.model)
    for length in LENGTHS:
        shape = (layers, heads, length, head_dim)
        kv = PrefixKV(
            torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
        )
        SavedPrefix(kv, models=models).save(folder / f"prefix{length}.safetensors")
        names.append(f"prefix{length}")
    return names


@dataclass
class Request:
    name: str
    text: str
    max_tokens: int


@dataclass
class Answer:
    text: str
    tokens: int
    seconds: float


def texts() -> list[str]:
    path = ROOT / "examples/data/sentiment/train.jsonl"
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line]


def plan(
    count: int,
    names: list[str],
    seed: int,
    tokens: tuple[int, int],
    blocks: int = 1,
    words: int | None = None,
) -> list[Request]:
    """`count` requests: the names round robin, seeded prompts (their first `words` words
    when given) and max tokens, shuffled within each of `blocks` consecutive blocks (so each
    block holds every name alike when its size is a multiple of the names)."""
    rng = random.Random(seed)
    pool = [" ".join(t.split()[:words]) for t in texts()] if words else texts()
    requests = [
        Request(names[i % len(names)], rng.choice(pool), rng.randint(*tokens)) for i in range(count)
    ]
    size = -(-count // blocks)
    out = []
    for at in range(0, count, size):
        block = requests[at : at + size]
        rng.shuffle(block)
        out += block
    return out


def every_kth_per_name(requests: list[Request], k: int) -> list[int]:
    """Indices of every k-th request of each name (the first one included)."""
    seen: dict[str, int] = {}
    picked = []
    for index, r in enumerate(requests):
        if seen.get(r.name, 0) % k == 0:
            picked.append(index)
        seen[r.name] = seen.get(r.name, 0) + 1
    return picked


# --- contenders ---------------------------------------------------------------------------


def run_clients(
    url: str, requests: list[Request], clients: int, extra: dict | None = None
) -> tuple[list[Answer], float]:
    """Send the requests from `clients` threads (each takes the next one when it is free),
    with the `extra` body fields; the answers in request order and the wall time."""
    todo: queue.Queue = queue.Queue()
    for index in range(len(requests)):
        todo.put(index)
    answers: list[Answer | None] = [None] * len(requests)

    def client() -> None:
        with httpx2.Client(base_url=url, timeout=TIMEOUT_S) as http:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                r = requests[index]
                body = {"model": r.name, "prompt": r.text, "max_tokens": r.max_tokens}
                started = time.perf_counter()
                body = {**body, "temperature": 0, **(extra or {})}
                reply = http.post("/v1/completions", json=body)
                seconds = time.perf_counter() - started
                if reply.status_code != 200:
                    raise RuntimeError(f"{reply.status_code}: {reply.text[:300]}")
                data = reply.json()
                tokens = data["usage"]["completion_tokens"]
                answers[index] = Answer(data["choices"][0]["text"], tokens, seconds)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return answers, time.perf_counter() - started


def run_alone(server: Server, requests: list[Request]) -> tuple[list[str], float]:
    """Each request alone through softprompt.generate; texts and wall time."""
    out = []
    started = time.perf_counter()
    for r in requests:
        options = SamplingOptions(max_new_tokens=r.max_tokens, greedy=True)
        out.append(
            generate(server.backbone, [r.text], server.adapters[r.name].steering, options)[0]
        )
    return out, time.perf_counter() - started


@dataclass
class PeftSide:
    """PEFT's models: one PeftModel per adapter on one sdpa copy of the base model."""

    models: dict
    tokenizer: object
    eos: set[int]
    max_batch: int

    def run(self, requests: list[Request]) -> tuple[list[Answer], float, int]:
        """Adapters in turn, each one's requests in batches; answers in request order, wall
        time, and the tokens computed (batch rows x the batch's steps)."""
        answers: list[Answer | None] = [None] * len(requests)
        computed = 0
        started = time.perf_counter()
        for name, model in self.models.items():
            mine = [i for i, r in enumerate(requests) if r.name == name]
            for at in range(0, len(mine), self.max_batch):
                batch = mine[at : at + self.max_batch]
                texts, steps = self._batch(model, [requests[i] for i in batch])
                computed += steps * len(batch)
                for i, answer in zip(batch, texts):
                    answers[i] = answer
        return answers, time.perf_counter() - started, computed

    def _batch(self, model, batch: list[Request]) -> tuple[list[Answer], int]:
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"
        try:
            encoded = tokenizer([r.text for r in batch], return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = "right"
        with torch.no_grad():
            ids = model.generate(
                **encoded,
                max_new_tokens=max(r.max_tokens for r in batch),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = ids[:, encoded.input_ids.shape[1] :]
        answers = []
        for row, r in zip(new.tolist(), batch):
            own = row[: r.max_tokens]
            cut = next((k for k, token in enumerate(own) if token in self.eos), len(own))
            text = tokenizer.decode(own[:cut], skip_special_tokens=True)
            answers.append(Answer(text, cut, 0.0))
        return answers, new.shape[1]


def peft_side(server: Server, folder: Path, names: list[str], max_batch: int) -> PeftSide:
    from peft import PeftModel

    warnings.filterwarnings("ignore", message="Position ids are not supported")
    base = load_backbone(MODEL).model
    base.set_attn_implementation("sdpa")  # as users run PEFT: transformers' default attention
    models = {}
    for name in names:
        out = export_peft(folder / f"{name}.safetensors", server.backbone, folder / "peft" / name)
        models[name] = PeftModel.from_pretrained(base, out)
    models[server.base_name] = base
    return PeftSide(models, server.backbone.tokenizer, server.engine.eos, max_batch)


class EngineTimers:
    """Where the server's engine thread spends its time: each part's own seconds (callees'
    time taken out: `_step` calls the scheduler's `schedule`, then `execute` and `update`),
    wrapped on the engine instance, its scheduler and the engine module (the engine's code
    is unchanged; `unwrap` puts the module's functions back)."""

    METHODS = ("schedule", "_step", "execute", "update")

    def __init__(self, engine: Engine) -> None:
        import softprompt.decoding.engine as engine_module

        self.engine = engine
        self.seconds = dict.fromkeys(self.METHODS, 0.0)
        self.calls = dict.fromkeys(self.METHODS, 0)
        self.rows_stepped = 0
        self._stack: list[float] = []
        self._module = engine_module
        self._saved = {name: getattr(engine_module, name) for name in ("execute", "update")}
        owners = {"schedule": engine.scheduler, "_step": engine}
        for name in self.METHODS:
            owner = owners.get(name, engine_module)
            setattr(owner, name, self._wrap(name, getattr(owner, name)))

    def unwrap(self) -> None:
        for name, function in self._saved.items():
            setattr(self._module, name, function)

    def _wrap(self, name: str, method):
        def timed(*args, **kwargs):
            if name == "_step":
                self.rows_stepped += len(self.engine.rows)
            self._stack.append(0.0)
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.seconds[name] += elapsed - self._stack.pop()
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1] += elapsed

        return timed

    def report(self) -> dict:
        steps = self.calls["_step"]
        return {
            "seconds": dict(self.seconds),
            "calls": dict(self.calls),
            "mean_rows_per_step": self.rows_stepped / steps if steps else 0.0,
        }


# --- phases -------------------------------------------------------------------------------


@dataclass
class Tally:
    """One contender's totals over the rounds."""

    tokens: int = 0
    seconds: float = 0.0
    requests: int = 0
    others: list[float] = field(default_factory=list)  # other processes' cores, per round
    latencies: list[float] = field(default_factory=list)
    computed: int = 0  # PEFT: rows x steps, padding-run steps included
    same: int = 0  # texts equal to the server's
    differing: dict[str, int] = field(default_factory=dict)  # per name, texts that differ
    compared: int = 0

    def add(self, tokens: int, measured: dict) -> None:
        self.tokens += tokens
        self.seconds += measured["seconds"]
        self.others.append(measured["others"])

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def memory_phase(server: Server, names: list[str], args) -> dict:
    first, total = args.memory_requests
    log(f"memory: {first} then {total - first} requests of {args.memory_tokens} new tokens ...")
    fixed = (args.memory_tokens, args.memory_tokens)
    requests = plan(total, names, args.seed + 1, fixed, words=MEMORY_WORDS)
    watch = CpuWatch()
    run_clients(server.url, requests[:first], args.clients)
    after_first = rss_bytes()
    run_clients(server.url, requests[first:], args.clients)
    after_total = rss_bytes()
    return {
        "requests": [first, total],
        "new_tokens": args.memory_tokens,
        "rss_mib": [after_first / 2**20, after_total / 2**20],
        "ratio": after_total / after_first,
        "others_cores": watch.cores()[0],
    }


def serve_round(server: Server, peft: PeftSide, chunk: list[Request], args) -> dict:
    watch = CpuWatch()
    answers, seconds = run_clients(server.url, chunk, args.clients)
    return {"answers": answers, "seconds": seconds, "others": watch.cores()[0]}


def logprobs_round(server: Server, peft: PeftSide, chunk: list[Request], args) -> dict:
    """The server again, every request asking for `logprobs: 5` (log-probabilities of each
    token and its 5 best alternatives)."""
    watch = CpuWatch()
    answers, seconds = run_clients(server.url, chunk, args.clients, {"logprobs": 5})
    return {"answers": answers, "seconds": seconds, "others": watch.cores()[0]}


def alone_round(server: Server, peft: PeftSide, chunk: list[Request], args) -> dict:
    watch = CpuWatch()
    picked = every_kth_per_name(chunk, args.alone_every)
    outs, seconds = run_alone(server, [chunk[i] for i in picked])
    return {"picked": picked, "texts": outs, "seconds": seconds, "others": watch.cores()[0]}


def peft_round(server: Server, peft: PeftSide, chunk: list[Request], args) -> dict:
    watch = CpuWatch()
    answers, seconds, computed = peft.run(chunk)
    others = watch.cores()[0]
    return {"answers": answers, "seconds": seconds, "computed": computed, "others": others}


ROUNDS = {
    "server": serve_round,
    "logprobs": logprobs_round,
    "alone": alone_round,
    "peft": peft_round,
}


def throughput_phase(server: Server, peft: PeftSide, requests: list[Request], args) -> dict:
    """The plan in `args.rounds` consecutive chunks; per chunk every contender, the order
    reversed every other round."""
    tallies = {name: Tally() for name in ROUNDS}
    for number in range(args.rounds):
        size = -(-len(requests) // args.rounds)
        chunk = requests[number * size : (number + 1) * size]
        order = list(ROUNDS) if number % 2 == 0 else list(reversed(ROUNDS))
        results: dict = {"requests": chunk}
        for name in order:
            log(f"  round {number + 1}/{args.rounds}: {name} ({len(chunk)} requests) ...")
            results[name] = ROUNDS[name](server, peft, chunk, args)
        _settle(tallies, results)
    return tallies


def _settle(tallies: dict[str, Tally], results: dict) -> None:
    served = results["server"]["answers"]
    tally = tallies["server"]
    tally.add(sum(a.tokens for a in served), results["server"])
    tally.requests += len(served)
    tally.latencies += [a.seconds for a in served]
    scored, tally = results["logprobs"], tallies["logprobs"]
    tally.add(sum(a.tokens for a in scored["answers"]), scored)
    tally.requests += len(scored["answers"])
    tally.same += sum(a.text == s.text for a, s in zip(scored["answers"], served))
    tally.compared += len(served)
    alone, tally = results["alone"], tallies["alone"]
    # alone: the server's token counts for the same requests (the same greedy decoding)
    tally.add(sum(served[i].tokens for i in alone["picked"]), alone)
    tally.requests += len(alone["picked"])
    tally.same += sum(served[i].text == t for i, t in zip(alone["picked"], alone["texts"]))
    tally.compared += len(alone["picked"])
    peft, tally = results["peft"], tallies["peft"]
    tally.add(sum(a.tokens for a in peft["answers"]), peft)
    tally.requests += len(peft["answers"])
    tally.computed += peft["computed"]
    tally.same += sum(a.text == s.text for a, s in zip(peft["answers"], served))
    for answer, reply, request in zip(peft["answers"], served, results["requests"]):
        if answer.text != reply.text:
            tally.differing[request.name] = tally.differing.get(request.name, 0) + 1
    tally.compared += len(served)


def decode_run(backbone: Backbone, steerings: list, prompts: list[list[int]], tokens: int):
    """All rows queued, then the engine started: the seconds of each decoding step run with
    every row, and the cache width (columns) at the first and last such step."""
    rows = len(prompts)
    stamps: list[tuple[float, int, int]] = []
    holder: list[Engine] = []
    finished: list[object] = []
    all_done = threading.Event()

    def on_step(batch: int, _tokens: int) -> None:
        rows = holder[0].rows
        stamps.append((time.perf_counter(), batch, max((r.length for r in rows), default=0)))

    def emit(event: object) -> None:
        if isinstance(event, Finished | Failed):
            finished.append(event)
            if len(finished) == rows:
                all_done.set()

    engine = Engine(backbone, max_batch=rows, queue_size=rows, on_step=on_step)
    engine.eos = set()  # every row decodes all its tokens: a row ending early spoils the step
    holder.append(engine)
    for steering, ids in zip(steerings, prompts):
        engine.submit(Job(steering, ids, SamplingOptions(max_new_tokens=tokens, greedy=True), emit))
    engine.start()
    all_done.wait(timeout=TIMEOUT_S)
    engine.stop(timeout=5)
    errors = [p.error for p in finished if isinstance(p, Failed)]
    if errors or len(finished) < rows:
        raise RuntimeError(f"decode run failed: {errors[:1] or 'timed out'}")
    full = [(a, b) for a, b in itertools.pairwise(stamps) if a[1] == rows and b[1] == rows]
    return [b[0] - a[0] for a, b in full], (full[0][1][2], full[-1][1][2]) if full else (0, 0)


def decode_phase(server: Server, names: list[str], requests: list[Request], args) -> dict:
    """Mixed rows against bare rows, the same prompts, alternating; median step each."""
    rows = args.max_batch
    tokenizer = server.backbone.tokenizer
    prompts = [tokenizer(r.text).input_ids for r in (requests * rows)[:rows]]
    everyone = [server.base_name, *names]
    kinds = {
        "mixed": [server.adapters[everyone[i % len(everyone)]].steering for i in range(rows)],
        "bare": [NoSteering()] * rows,
    }
    steps: dict[str, list[float]] = {kind: [] for kind in kinds}
    widths: dict[str, tuple[int, int]] = {}
    others: dict[str, list[float]] = {kind: [] for kind in kinds}
    for number in range(args.decode_rounds):
        order = list(kinds) if number % 2 == 0 else list(reversed(kinds))
        for kind in order:
            watch = CpuWatch()
            seconds, widths[kind] = decode_run(
                server.backbone, kinds[kind], prompts, args.decode_tokens
            )
            steps[kind] += seconds
            others[kind].append(watch.cores()[0])
    out = {}
    for kind in kinds:
        if not steps[kind]:
            raise RuntimeError(f"no decoding step ran with all {rows} rows ({kind})")
        step = statistics.median(steps[kind])
        out[kind] = {
            "median_step_ms": step * 1e3,
            "tokens_per_s": rows / step,
            "steps": len(steps[kind]),
            "cache_width": list(widths[kind]),
            "others_cores": statistics.mean(others[kind]),
        }
    out["ratio"] = out["mixed"]["tokens_per_s"] / out["bare"]["tokens_per_s"]
    return out


# --- the report ---------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def summary(tallies: dict[str, Tally], decode: dict, memory: dict, args) -> dict:
    server, alone, peft = (tallies[k] for k in ("server", "alone", "peft"))
    lat = server.latencies
    contenders = {
        name: {
            "requests": t.requests,
            "useful_tokens": t.tokens,
            "seconds": t.seconds,
            "tokens_per_s": t.rate,
            "others_cores": statistics.mean(t.others),
            **({"same_text_as_server": [t.same, t.compared]} if t.compared else {}),
        }
        for name, t in tallies.items()
    }
    contenders["server"]["latency_s"] = {"p50": quantile(lat, 0.5), "p99": quantile(lat, 0.99)}
    contenders["peft"]["computed_tokens"] = peft.computed
    contenders["peft"]["differing_by_name"] = peft.differing
    ratios = {
        "vs_alone": server.rate / alone.rate,
        "vs_peft": server.rate / peft.rate,
        "mixed_vs_bare": decode["ratio"],
        "rss_ratio": memory["ratio"],
        "logprobs_cost": server.rate / tallies["logprobs"].rate,
    }
    met = {
        k: (v <= TARGETS[k] if k in LOWER_IS_BETTER else v >= TARGETS[k]) for k, v in ratios.items()
    }
    return {
        "model": MODEL,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "contenders": contenders,
        "decode": decode,
        "memory": memory,
        "ratios": ratios,
        "targets": TARGETS,
        "met": met,
    }


def table(result: dict) -> str:
    s = result["settings"]
    c = result["contenders"]
    rows = [
        f"serving {MODEL} (float32): {s['requests']} requests, {s['new_tokens'][0]}-"
        f"{s['new_tokens'][1]} new tokens each, greedy, 5 names (bare, 2 soft prompts, 2 "
        f"prefixes), {s['rounds']} rounds alternating",
        "",
        "| contender | requests | useful tokens | seconds | tokens/s | latency p50 / p99 "
        "| same text as the server | other processes' CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    labels = {
        "server": f"server ({s['clients']} clients, max batch {s['max_batch']})",
        "logprobs": "server, every request with `logprobs: 5`",
        "alone": "one at a time (`softprompt.generate`)",
        "peft": f"PEFT in turn (batches <= {s['max_batch']})",
    }
    for name, label in labels.items():
        x = c[name]
        latency = (
            f"{x['latency_s']['p50']:.1f} / {x['latency_s']['p99']:.1f} s"
            if "latency_s" in x
            else "-"
        )
        same = (
            "-" if "same_text_as_server" not in x else "{} of {}".format(*x["same_text_as_server"])
        )
        rows.append(
            f"| {label} | {x['requests']} | {x['useful_tokens']:,} | {x['seconds']:.1f} "
            f"| {x['tokens_per_s']:.1f} | {latency} | {same} | {x['others_cores']:.2f} cores |"
        )
    rows += _other_lines(result)
    return "\n".join(rows)


def _engine_line(engine: dict, wall: float) -> str:
    """The server rounds' engine time by method, as shares of their wall time."""
    words = {
        "schedule": "schedule (joining: prompts embedded, prefixes written, blocks)",
        "execute": "forward (decoding rows + prompt chunks)",
        "update": "pick/decode tokens, events",
        "_step": "rest of the step (rows leaving)",
    }
    parts = [
        f"{word} {engine['seconds'][m]:.1f} s ({engine['seconds'][m] / wall:.0%}, "
        f"{engine['calls'][m]} calls)"
        for m, word in words.items()
    ]
    rest = wall - sum(engine["seconds"].values())
    return (
        f"server engine over the server rounds' {wall:.1f} s (with and without logprobs): "
        f"{', '.join(parts)}; the rest "
        f"{rest:.1f} s ({rest / wall:.0%}); {engine['mean_rows_per_step']:.1f} rows per "
        "step on average"
    )


def _other_lines(result: dict) -> list[str]:
    c, d, m = result["contenders"], result["decode"], result["memory"]
    r, t, met = result["ratios"], result["targets"], result["met"]
    peft = c["peft"]
    lines = [
        "",
        f"PEFT computed {peft['computed_tokens']:,} token rows (each batch runs to its longest "
        f"request), {peft['useful_tokens']:,} of them useful; texts unlike the server's, by "
        f"name: {peft['differing_by_name'] or 'none'}",
    ]
    if "server_engine" in result:
        wall = c["server"]["seconds"] + c["logprobs"]["seconds"]
        lines.append(_engine_line(result["server_engine"], wall))
    for kind in ("mixed", "bare"):
        x = d[kind]
        lines.append(
            f"decode, {result['settings']['max_batch']} {kind} rows: median step "
            f"{x['median_step_ms']:.1f} ms over {x['steps']} steps = {x['tokens_per_s']:.1f} "
            f"tokens/s; cache width {x['cache_width'][0]} -> {x['cache_width'][1]} columns; "
            f"other processes {x['others_cores']:.2f} cores"
        )
    lines.append(
        f"memory: RSS after {m['requests'][0]:,} requests {m['rss_mib'][0]:.0f} MiB, after "
        f"{m['requests'][1]:,} {m['rss_mib'][1]:.0f} MiB ({m['new_tokens']} new tokens each); "
        f"other processes {m['others_cores']:.2f} cores"
    )
    words = {
        "vs_alone": "server tokens/s / one at a time",
        "vs_peft": "server tokens/s / PEFT in turn",
        "mixed_vs_bare": "decode tokens/s, mixed / bare rows",
        "rss_ratio": f"RSS after {m['requests'][1]:,} / after {m['requests'][0]:,} requests",
        "logprobs_cost": "time per token with logprobs: 5 / without (server tokens/s ratio)",
    }
    busy = result.get("machine_busy")
    if busy:
        lines.append(
            f"machine during the run ({busy['seconds']:.0f} s): other processes used "
            f"{busy['others_cores_mean']:.2f} cores on average, this one "
            f"{busy['own_cores_mean']:.2f}; load average {busy['load_average_start']} at the "
            f"start, {busy['load_average_end']} at the end"
        )
        if busy["others_cores_mean"] > 0.5 and result.get("torch_threads", 1) > 1:
            lines.append(
                "  (with other processes on the cores, torch's intra-op threads wait for each "
                "other: --threads 1 can be many times faster on a busy machine)"
            )
    lines.append("targets:")
    for key, word in words.items():
        sign = "<=" if key in LOWER_IS_BETTER else ">="
        verdict = "met" if met[key] else "MISSED"
        lines.append(f"  {word}: {r[key]:.2f}x (target {sign} {t[key]:.2f}x): {verdict}")
    return lines


# --- main ---------------------------------------------------------------------------------


def warm_up(server: Server, peft: PeftSide, requests: list[Request]) -> None:
    """One short untimed generation per name in each contender (first-call costs)."""
    for name in {r.name for r in requests}:
        sample = next(r for r in requests if r.name == name)
        short = Request(name, sample.text, 2)
        run_alone(server, [short])
        peft.run([short])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=120, help="throughput requests in all")
    parser.add_argument("--rounds", type=int, default=2, help="chunks the contenders alternate on")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=16, help="server and PEFT batch bound")
    parser.add_argument("--new-tokens", type=int, nargs=2, default=[16, 64], metavar=("MIN", "MAX"))
    parser.add_argument(
        "--alone-every", type=int, default=6, help="one at a time runs every k-th request"
    )
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--decode-rounds", type=int, default=2)
    parser.add_argument("--memory-requests", type=int, nargs=2, default=[100, 1000])
    parser.add_argument("--memory-tokens", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0 < args.memory_requests[0] < args.memory_requests[1]:
        parser.error("--memory-requests: two counts, the first smaller")
    out = sys.stderr if args.json else sys.stdout
    print(machine(), file=out, flush=True)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table(result), flush=True)


def run(args) -> dict:
    whole = CpuWatch()
    load_before = load_average()
    backbone = load_backbone(MODEL)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        folder = Path(tmp)
        names = write_adapters(backbone, folder, args.seed)
        with Server(
            adapters_dir=folder,
            model=backbone,
            host="127.0.0.1",
            port=0,
            max_batch=args.max_batch,
        ) as server:
            everyone = [server.base_name, *names]
            memory = memory_phase(server, everyone, args)
            peft = peft_side(server, folder, names, args.max_batch)
            tokens = tuple(args.new_tokens)
            requests = plan(args.requests, everyone, args.seed, tokens, args.rounds)
            warm_up(server, peft, requests)
            log("throughput ...")
            timers = EngineTimers(server.engine)  # only the server rounds use its engine
            tallies = throughput_phase(server, peft, requests, args)
            timers.unwrap()
            log("decoding steps, mixed vs bare ...")
            decode = decode_phase(server, names, requests, args)
    result = summary(tallies, decode, memory, args)
    result["server_engine"] = timers.report()
    result["torch_threads"] = torch.get_num_threads()
    others, own = whole.cores()
    result["machine_busy"] = {
        "others_cores_mean": others,
        "own_cores_mean": own,
        "load_average_start": load_before,
        "load_average_end": load_average(),
        "seconds": time.perf_counter() - whole.started,
    }
    log(
        f"whole run {result['machine_busy']['seconds']:.0f} s; other processes used "
        f"{others:.2f} cores on average, this one {own:.2f}; load average {load_before} at "
        f"the start, {result['machine_busy']['load_average_end']} at the end"
    )
    return result


if __name__ == "__main__":
    main()
