"""Cartridges on a bundled model and the sample documents (examples/data/cartridge/):

1. train: each --cartridges entry (`document:length[:steps]`, document handbook or ferry) by
   self-study (`train_cartridge`), timed (the teacher's turns and the training steps), its dev
   KL curve and number of teacher turns kept; a document's teacher turns are made once;
2. eval: question accuracy and reference-answer log-likelihood per token for nothing, the
   handbook truncated to each of --lengths, the whole handbook in context (its own keys/values
   in front), and each handbook cartridge; the closed share of the gap; sizes of the
   cartridges' keys/values against the document's;
3. serve: a real `softprompt serve` process per condition on 127.0.0.1, --clients loopback
   clients at once, one sample question each, streamed, greedy: each handbook cartridge by name
   against the bare model with the whole handbook in each request's text; requests/s, tokens/s,
   time to first token, the server process's peak resident memory (VmHWM);
4. compose: the cartridges of --compose concatenated (`a+b`): each document's questions with
   the composition, with its own cartridge alone, with nothing and with the document.

    python benchmarks/bench_cartridge.py --cartridges handbook:256 handbook:64 ferry:64:40 \
        --phases train --work /tmp/cart --out /tmp/cart/results.json
    python benchmarks/bench_cartridge.py --phases eval,compose,serve --work /tmp/cart \
        --out /tmp/cart/results.json

Every phase writes into --out (JSON, merged), so phases can run as separate commands.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
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
DOCUMENTS = {"handbook": DOC, "ferry": FERRY}
QUESTION_FILES = {"handbook": QUESTIONS, "ferry": FERRY_QUESTIONS}


def settings(args) -> list[str]:
    """The self-study and training keys of every cartridge trained here."""
    return [
        f"task.chunk_tokens={args.chunk_tokens}",
        f"task.conversations={args.conversations}",
        f"task.dev_conversations={args.dev_conversations}",
        f"task.max_new_tokens={args.max_new_tokens}",
        "task.top_k=20",
        f"task.generation_batch={args.generation_batch}",
        f"train.lr={args.lr}",
        f"train.batch_size={args.batch_size}",
        f"train.eval_every={args.eval_every}",
        f"train.checkpoint_every={args.eval_every}",
    ]


def phase_train(args, backbone, results: dict) -> None:
    """Each --cartridges entry (`document:length[:steps]`); the teacher's turns of a document
    are made once and copied into the next run of that document (the run reuses them: same
    settings, same fingerprint)."""
    for spec in args.cartridges:
        name, length, *rest = spec.split(":")
        length, steps = int(length), int(rest[0]) if rest else args.steps
        out = Path(args.work) / f"{name}{length}.safetensors"
        shared = Path(args.work) / f"{name}-turns"  # one set of teacher turns per document
        if shared.is_dir():
            shutil.copytree(shared, out.with_suffix(".run") / "self_study", dirs_exist_ok=True)
        started = time.perf_counter()
        summary = train_cartridge(
            [DOCUMENTS[name]],
            out,
            model=args.model,
            length=length,
            steps=steps,
            overrides=settings(args),
            backbones=[backbone],
            progress=False,
        )
        seconds = time.perf_counter() - started
        shutil.copytree(out.with_suffix(".run") / "self_study", shared, dirs_exist_ok=True)
        turns = {s: len(read_turn_lengths(shared / f"{s}.safetensors")) for s in ("train", "dev")}
        results.setdefault("train", {})[f"{name}{length}"] = {
            "seconds_total": seconds,
            "seconds_steps": summary["train_seconds"],
            "best_dev_kl_per_token": summary["best_value"],
            "steps": summary["steps"],
            "turns": turns,
            "dev_curve": dev_curve(out.with_suffix(".run")),
        }
        common_log(f"trained {out.name}: {seconds:.0f} s, dev KL {summary['best_value']:.4f}")


def read_turn_lengths(path: Path) -> list:
    """[prompt, reply] lengths of the teacher turns kept at `path`."""
    from softprompt.files import read_safetensors

    return read_safetensors(path)[0]["lengths"].tolist()


def dev_curve(run: Path) -> list:
    """(step, dev KL per token) of every dev check of a run, from its metrics file."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [[r["step"], r["dev"]["mean"]["loss"]] for r in rows if r.get("event") == "eval"]


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
    """A real `softprompt serve` process per condition (fresh, so its peak resident memory is
    that condition's), --clients loopback clients at once, one sample question each: the
    cartridges by name against the bare model with the document in each request's text."""
    questions = read_questions(QUESTIONS)[: args.clients]
    text = DOC.read_text(encoding="utf-8")
    if args.serve_doc_tokens:  # the document's first N tokens (a slow machine's budget)
        ids = backbone.tokenizer(text, add_special_tokens=False).input_ids[: args.serve_doc_tokens]
        text = backbone.tokenizer.decode(ids)
    asks = [f"Question: {q.question}\nAnswer:" for q in questions]
    served = {}
    for length in args.lengths:
        source = Path(args.work) / f"handbook{length}.safetensors"
        with serve_process(args, [source]) as server:
            row = clients(server["url"], source.stem, asks, args.max_tokens)
        served[f"cartridge {length}"] = {**row, "peak_rss_mib": server["peak_rss_mib"]}
    with serve_process(args, []) as server:
        prompts = [text + "\n\n" + a for a in asks]
        base = Path(args.model).name if Path(args.model).exists() else args.model
        row = clients(server["url"], base, prompts, args.max_tokens)
    served["document in context"] = {**row, "peak_rss_mib": server["peak_rss_mib"]}
    results["serve"] = {
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "document_tokens_in_context": len(backbone.tokenizer(text).input_ids),
        **served,
    }


@contextlib.contextmanager
def serve_process(args, artifacts: list[Path]):
    """`softprompt serve` on 127.0.0.1 (a free port) in a child process until /health answers;
    yields {"url"}, to which the child's peak resident memory (VmHWM) is added at the end."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "softprompt"), "serve", *map(str, artifacts)]
    command += ["--model", args.model, "--port", str(port), "--max-batch", str(args.clients)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = {"url": f"http://127.0.0.1:{port}"}
    try:
        wait_healthy(child, server["url"])
        yield server
        server["peak_rss_mib"] = peak_rss(child.pid) / 2**20
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def wait_healthy(child: subprocess.Popen, url: str, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"softprompt serve ended: {child.stderr.read().decode()[-2000:]}")
        try:
            if httpx2.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"softprompt serve did not answer /health within {limit:.0f} s")


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def clients(url: str, model: str, prompts: list[str], max_tokens: int) -> dict:
    """Every prompt from its own thread at once, streamed; tokens/s and requests/s over the
    whole phase, each request's time to its first token."""
    first, tokens = [], []

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
        with httpx2.stream("POST", url + "/v1/completions", json=body, timeout=3600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if not seen and chunk.get("choices") and chunk["choices"][0].get("text"):
                    first.append(time.perf_counter() - sent)
                    seen = True
                if chunk.get("usage"):
                    tokens.append(chunk["usage"]["completion_tokens"])

    ask("Question: Who are you?\nAnswer:")  # warm-up, untimed: a fresh server's first call
    first.clear(), tokens.clear()
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        list(pool.map(ask, prompts))  # re-raises a client's error
    wall = time.perf_counter() - started
    row = {
        "wall_s": wall,
        "requests": len(prompts),
        "completion_tokens": sum(tokens),
        "tokens_per_s": sum(tokens) / wall,
        "requests_per_s": len(prompts) / wall,
        "ttft_mean_s": sum(first) / max(len(first), 1),
        "ttft_max_s": max(first, default=0),
    }
    common_log(
        f"  {model}: {row['requests_per_s']:.2f} requests/s, {row['tokens_per_s']:.2f} tokens/s, "
        f"first token {row['ttft_mean_s']:.2f} s mean"
    )
    return row


def phase_compose(args, backbone, results: dict) -> None:
    """Each document's questions with the composition of --compose (in that order) against
    its own cartridge alone, nothing, and the document itself in context."""
    work = Path(args.work)
    names = args.compose
    paths = [work / f"{n}.safetensors" for n in names]
    both = open_artifact("+".join(map(str, paths))).steering_for(backbone, "+".join(names))
    rows = {}
    for name, path in zip(names, paths):
        document = name.rstrip("0123456789")
        questions = read_questions(QUESTION_FILES[document])[: args.questions]
        alone = open_artifact(path).steering_for(backbone, name)
        whole = document_steering(backbone, DOCUMENTS[document].read_text(encoding="utf-8"))
        rows[f"{name} alone / {document}"] = score(backbone, alone, questions, alone.length)
        rows[f"{'+'.join(names)} / {document}"] = score(backbone, both, questions, both.length)
        rows[f"nothing / {document}"] = score(backbone, NoSteering(), questions, 0)
        rows[f"whole {document} / {document}"] = score(backbone, whole, questions, whole.length)
    results["compose"] = rows


def common_log(line: str) -> None:
    print(line, flush=True)


PHASES = {"train": phase_train, "eval": phase_eval, "serve": phase_serve, "compose": phase_compose}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cartridges", nargs="+", default=["handbook:256", "handbook:64"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--dev-conversations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--generation-batch", type=int, default=16)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--questions", type=int, default=None, help="Only the first N.")
    parser.add_argument("--serve-doc-tokens", type=int, default=None)
    parser.add_argument("--compose", nargs="+", default=["handbook64", "ferry64"])
    parser.add_argument("--phases", default="train,eval,serve,compose")
    parser.add_argument("--work", default="/tmp/bench-cartridge")
    parser.add_argument("--out", default="/tmp/bench-cartridge/results.json")
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["machine"] = common.machine()
    results["load_average"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    results.setdefault("runs", []).append({"args": vars(args), "load": results["load_average"]})
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
