"""Build a small family of SmolLM2-135M variants that differ only by a seed, standing in for
MultiBERTs (which are not installable here): each variant continues language-model training
for a few steps on the sample texts in its own seeded order, then is saved as a local model.

    .venv/bin/python examples/smollm2_family.py --out runs/smollm2-family --count 3

The variants share their pre-trained starting point, so they are much closer to each other
than independently pre-trained MultiBERTs are; docs/joint.md reports what that means.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from softprompt.models import ensure_bundled
from softprompt.models.tiny import corpus_texts

ROOT = Path(__file__).resolve().parents[1]


def build_variant(out: Path, seed: int, steps: int, lr: float, batch: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = ensure_bundled("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    texts = corpus_texts(ROOT / "examples" / "data")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        rows = torch.randint(0, len(texts), (batch,), generator=generator).tolist()
        enc = tokenizer(
            [texts[i] for i in rows],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=64,
        )
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"seed {seed} step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/smollm2-family"))
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    for seed in range(args.count):
        target = args.out / f"seed-{seed}"
        if (target / "config.json").is_file():
            print(f"{target} exists; skipping")
            continue
        build_variant(target, seed, args.steps, args.lr, args.batch)


if __name__ == "__main__":
    main()
