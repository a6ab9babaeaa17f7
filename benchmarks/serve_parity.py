"""How often a served request's greedy text equals the same request alone (`softprompt.generate`,
greedy), in float32 and bfloat16, on the bundled SmolLM2 with mixed adapters.

In float32 every request must match (tests check that on tiny models); in bfloat16 a batch's
padding changes the order of floating-point sums, which can flip a near-tie, so the share is
measured here and reported in BENCHMARKS.md.

    python benchmarks/serve_parity.py --requests 48 --dtype float32 bfloat16
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import random
import tempfile
from pathlib import Path

import httpx2
import torch
from common import default_precisions, machine

from softprompt.generation import SamplingOptions, generate
from softprompt.methods.artifact import model_record
from softprompt.methods.prefix import SavedPrefix
from softprompt.methods.prompt import SoftPrompt
from softprompt.models import load_backbone
from softprompt.serving.server import Server
from softprompt.steering.prefix import PrefixKV, prefix_geometry

TEXTS = [
    "The weather today is",
    "My favourite book is about",
    "In the morning I usually",
    "The best way to learn a language is",
    "Our team released a new version that",
    "The museum opens at",
]


def write_adapters(backbone, folder: Path, seed: int = 0) -> None:
    """Soft prompts of lengths 8 and 16, prefixes of lengths 8 and 16, at the scale of real
    embeddings and keys/values."""
    generator = torch.Generator().manual_seed(seed)
    models = [model_record(backbone)]
    scale = float(backbone.embedding_table().std())
    for length in (8, 16):
        embedding = torch.randn(length, backbone.hidden_size, generator=generator) * scale
        SoftPrompt(embedding, models=models).save(folder / f"prompt{length}.safetensors")
    layers, heads, head_dim = prefix_geometry(backbone.model)
    for length in (8, 16):
        shape = (layers, heads, length, head_dim)
        keys = torch.randn(shape, generator=generator)
        SavedPrefix(PrefixKV(keys, torch.randn(shape, generator=generator)), models=models).save(
            folder / f"prefix{length}.safetensors"
        )


def measure(dtype: str, requests: int, seed: int) -> dict:
    backbone = load_backbone("smollm2-135m", dtype=dtype)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as folder:
        write_adapters(backbone, Path(folder))
        with Server(adapters_dir=folder, model=backbone, port=0, max_batch=16) as server:
            names = list(server.adapters)
            jobs = [
                (rng.choice(names), rng.choice(TEXTS), rng.randint(16, 48)) for _ in range(requests)
            ]

            def ask(job):
                body = {"model": job[0], "prompt": job[1], "max_tokens": job[2], "temperature": 0}
                reply = httpx2.post(server.url + "/v1/completions", json=body, timeout=600)
                return reply.json()["choices"][0]["text"]

            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                served = list(pool.map(ask, jobs))
            alone = [
                generate(
                    backbone,
                    [text],
                    server.adapters[name].steering,
                    SamplingOptions(max_new_tokens=tokens, greedy=True),
                )[0]
                for name, text, tokens in jobs
            ]
    same = sum(a == b for a, b in zip(served, alone))
    return {"dtype": dtype, "requests": requests, "identical": same, "share": same / requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=["float32", "bfloat16"],
        help="default: both where this machine computes bf16 natively, else float32 only",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print(machine())
    dtypes = args.dtype or default_precisions(["float32", "bfloat16"])
    results = [measure(dtype, args.requests, args.seed) for dtype in dtypes]
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        print(
            f"{r['dtype']:>9}: {r['identical']}/{r['requests']} served texts identical to "
            f"alone ({100 * r['share']:.0f}%)"
        )


if __name__ == "__main__":
    main()
