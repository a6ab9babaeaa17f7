"""Cartridges on a bundled model and the sample handbook (examples/data/cartridge/):

1. train: cartridges of each --lengths by self-study (`train_cartridge`), timed (the teacher's
   turns and the training steps together), with the settings printed;
2. eval: question accuracy and reference-answer log-likelihood per token for nothing, the
   document truncated to each cartridge's length, the whole document in context (its own
   keys/values in front), and each cartridge; the closed share of the gap; sizes of the
   cartridge's keys/values against the document's;
3. serve: --clients clients at once, one question each, streamed, against the in-process
   server: the cartridge by name against the whole document in each request's text; tokens/s,
   time to first token, peak resident memory sampled during each phase;
4. compose: a second cartridge on ferry.txt; each question set with its cartridge alone and with
   the composition handbook+ferry.

    python benchmarks/bench_cartridge.py --model smollm2-135m --steps 40 --out /tmp/cart.json

Every phase writes into --out (JSON, merged), so phases can run separately (--phases).
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path

import common
import httpx2

from softprompt.artifacts import open_artifact
from softprompt.models import load_backbone
from softprompt.steering.base import NoSteering
from softprompt.steering.prefix import prefix_geometry
from softprompt.tasks.questions import document_steering, read_questions, score_questions
from softprompt.training.cartridge import train_cartridge

DATA = common.ROOT / "examples" / "data" / "cartridge"
DOC, QUESTIONS = DATA / "handbook.txt", DATA / "questions.jsonl"
FERRY, FERRY_QUESTIONS = DATA / "ferry.txt", DATA / "ferry_questions.jsonl"


def settings(args) -> list[str]:
    """The self-study and training keys of every cartridge trained here."""
    return [
        f"task.chunk_tokens={args.chunk_tokens}",
        f"task.conversations={args.conversations}",
        "task.dev_conversations=4",
        f"task.max_new_tokens={args.max_new_tokens}",
        "task.top_k=20",
        "task.generation_batch=8",
        f"train.lr={args.lr}",
        f"train.batch_size={args.batch_size}",
    ]


def phase_train(args, backbone, results: dict) -> None:
    """Each length on the handbook, the shortest on the ferry rules; the teacher's turns of a
    document are made once and copied into the next run (the run reuses them: same settings)."""
    for length in args.lengths:
        for name, doc in (("handbook", DOC), ("ferry", FERRY)):
            if name == "ferry" and length != min(args.lengths):
                continue
            out = Path(args.work) / f"{name}{length}.safetensors"
            shared = Path(args.work) / f"{name}-turns"  # one set of teacher turns per document
            if shared.is_dir():
                shutil.copytree(shared, out.with_suffix(".run") / "self_study", dirs_exist_ok=True)
            started = time.perf_counter()
            summary = train_cartridge(
                [doc],
                out,
                model=args.model,
                length=length,
                steps=args.steps,
                overrides=settings(args),
                backbones=[backbone],
                progress=False,
            )
            seconds = time.perf_counter() - started
            shutil.copytree(out.with_suffix(".run") / "self_study", shared, dirs_exist_ok=True)
            results.setdefault("train", {})[f"{name}{length}"] = {
                "seconds_total": seconds,
                "seconds_steps": summary["train_seconds"],
                "best_dev_kl_per_token": summary["best_value"],
                "steps": summary["steps"],
            }
            common_log(f"trained {out.name}: {seconds:.0f} s, dev KL {summary['best_value']:.4f}")


def phase_eval(args, backbone, results: dict) -> None:
    questions = read_questions(QUESTIONS)[: args.questions]
    text = DOC.read_text(encoding="utf-8")
    rows = {"nothing": score(backbone, NoSteering(), questions, 0)}
    whole = document_steering(backbone, text)
    rows["whole document"] = score(backbone, whole, questions, whole.length)
    for length in args.lengths:
        cut = document_steering(backbone, text, length)
        rows[f"truncated to {length}"] = score(backbone, cut, questions, length)
        cartridge = open_artifact(Path(args.work) / f"handbook{length}.safetensors")
        kv = cartridge.steering_for(backbone, "cartridge")
        rows[f"cartridge {length}"] = score(backbone, kv, questions, length)
        for key in ("accuracy", "answer_loglik"):
            low, high = rows["nothing"][key], rows["whole document"][key]
            got = rows[f"cartridge {length}"][key]
            rows[f"cartridge {length}"][f"gap_closed_{key}"] = (
                (got - low) / (high - low) if high != low else None
            )
    layers, kv_heads, head_dim = prefix_geometry(backbone.model)
    per_position = 2 * layers * kv_heads * head_dim * backbone.dtype.itemsize
    results["eval"] = rows
    results["sizes"] = {
        "document_tokens": whole.length,
        "document_kv_bytes": whole.length * per_position,
        **{f"cartridge{n}_kv_bytes": n * per_position for n in args.lengths},
    }


def score(backbone, steering, questions, length: int) -> dict:
    started = time.perf_counter()
    row = score_questions(backbone, steering, questions, batch_size=8)
    row.update(length=length, seconds=time.perf_counter() - started)
    common_log(
        f"  {length:5d} positions: accuracy {row['accuracy']:.3f}, "
        f"answer log-lik {row['answer_loglik']:.3f} ({row['seconds']:.0f} s)"
    )
    return row


def phase_serve(args, backbone, results: dict) -> None:
    from softprompt.serving.server import Server

    questions = read_questions(QUESTIONS)[: args.clients]
    text = DOC.read_text(encoding="utf-8")
    if args.serve_doc_tokens:  # the document's first N tokens (a slow machine's budget)
        ids = backbone.tokenizer(text, add_special_tokens=False).input_ids[: args.serve_doc_tokens]
        text = backbone.tokenizer.decode(ids)
    length = min(args.lengths)
    source = Path(args.work) / f"handbook{length}.safetensors"
    served = {}
    with Server(model=backbone, artifacts=[source], port=0, max_batch=args.clients) as server:
        asks = [f"Question: {q.question}\nAnswer:" for q in questions]
        served["cartridge"] = clients(server, source.stem, asks, args.max_tokens)
        served["document in context"] = clients(
            server, server.base_name, [text + "\n\n" + a for a in asks], args.max_tokens
        )
    results["serve"] = {
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "document_tokens_in_context": len(backbone.tokenizer(text).input_ids),
        **served,
    }


def clients(server, model: str, prompts: list[str], max_tokens: int) -> dict:
    """Every prompt from its own thread at once, streamed; tokens/s over the whole phase,
    each request's time to its first token, peak resident memory sampled every 20 ms."""
    first, tokens, peak, done = [], [], [common_rss()], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak.append(common_rss())

    def ask(prompt: str) -> None:
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        sent, seen = time.perf_counter(), False
        with httpx2.stream("POST", server.url + "/v1/completions", json=body, timeout=3600) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if not seen and chunk.get("choices") and chunk["choices"][0].get("text"):
                    first.append(time.perf_counter() - sent)
                    seen = True
                if chunk.get("usage"):
                    tokens.append(chunk["usage"]["completion_tokens"])

    watcher = threading.Thread(target=sample)
    watcher.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    done.set()
    watcher.join()
    row = {
        "wall_s": wall,
        "completion_tokens": sum(tokens),
        "tokens_per_s": sum(tokens) / wall,
        "requests_per_s": len(prompts) / wall,
        "ttft_mean_s": sum(first) / max(len(first), 1),
        "ttft_max_s": max(first, default=0),
        "peak_rss_mib": max(peak) / 2**20,
    }
    common_log(
        f"  {model}: {row['tokens_per_s']:.2f} tokens/s, first token "
        f"{row['ttft_mean_s']:.1f} s mean, peak RSS {row['peak_rss_mib']:.0f} MiB"
    )
    return row


def phase_compose(args, backbone, results: dict) -> None:
    """Each question set with the composition handbook+ferry, the ferry set with its cartridge
    alone and with nothing (the handbook set alone is the eval phase's cartridge row)."""
    length = min(args.lengths)
    work = Path(args.work)
    a, b = work / f"handbook{length}.safetensors", work / f"ferry{length}.safetensors"
    handbook = read_questions(QUESTIONS)[: args.questions]
    ferry = read_questions(FERRY_QUESTIONS)
    both = open_artifact(f"{a}+{b}").steering_for(backbone, "handbook+ferry")
    alone = open_artifact(b).steering_for(backbone, "ferry")
    results["compose"] = {
        "handbook+ferry / handbook questions": score(backbone, both, handbook, both.length),
        "handbook+ferry / ferry questions": score(backbone, both, ferry, both.length),
        "ferry alone / ferry questions": score(backbone, alone, ferry, alone.length),
        "nothing / ferry questions": score(backbone, NoSteering(), ferry, 0),
    }


def common_log(line: str) -> None:
    print(line, flush=True)


def common_rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


PHASES = {"train": phase_train, "eval": phase_eval, "serve": phase_serve, "compose": phase_compose}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--chunk-tokens", type=int, default=512)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--questions", type=int, default=None, help="Only the first N.")
    parser.add_argument("--serve-doc-tokens", type=int, default=None)
    parser.add_argument("--phases", default="train,eval,serve,compose")
    parser.add_argument("--work", default="/tmp/bench-cartridge")
    parser.add_argument("--out", default="/tmp/bench-cartridge/results.json")
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["machine"] = common.machine()
    results["load_average"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results["args"] = vars(args)
    print(results["machine"], "| load", results["load_average"], flush=True)
    backbone = load_backbone(args.model)
    for phase in args.phases.split(","):
        started = time.perf_counter()
        PHASES[phase](args, backbone, results)
        results.setdefault("phase_seconds", {})[phase] = time.perf_counter() - started
        out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
