"""Prompt-tuning training throughput: softprompt's trainer vs a PEFT PromptTuningConfig loop
doing the same work — bundled SmolLM2, sample sentiment task, 16 virtual tokens, batch 8, the
same full-vocabulary loss on the label word, the same precision and number of steps.

Contenders alternate in blocks within one process (A B A B ...); medians and ratios are
printed with the machine. Peak activations are counted exactly (autograd saved tensors).
Run: .venv/bin/python benchmarks/bench_train_vs_peft.py [--rounds 8] [--steps 5]
     [--model smollm2-135m] (any model spec: both sides load the same model)
"""

from __future__ import annotations

import argparse
import json

import torch
from common import ROOT, alternate, default_precisions, device, machine, median

from profiling import saved_activation_peak
from softprompt.config import load_config
from softprompt.models import load_backbone
from softprompt.training.trainer import Trainer

BATCH = 8
MODEL = "smollm2-135m"


def softprompt_trainer(precision: str, bucketing: int = 0, model: str = MODEL) -> Trainer:
    config = load_config(
        ROOT / "examples/configs/sentiment.yaml",
        [
            f"models={json.dumps([model])}",
            f"task.data={ROOT / 'examples/data/sentiment'}",
            "task.loss=vocab",
            f"train.precision={precision}",
            f"train.batch_size={BATCH}",
            f"train.micro_batch_size={BATCH}",
            "train.steps=1000",
            f"train.length_bucketing={bucketing}",
        ],
    )
    return Trainer(config, "/tmp/bench-softprompt", progress=False)


def softprompt_step(trainer: Trainer):
    state = trainer.fresh_state()
    return lambda: trainer.train_step(state)


def peft_step(precision: str, trainer: Trainer, model_spec: str = MODEL):
    """PEFT on exactly the batches softprompt trains on, step by step."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    dtype = "bfloat16" if precision == "bf16" else "float32"
    model = load_backbone(model_spec, dtype=dtype, device=device()).model
    model.set_attn_implementation("sdpa")  # as users run PEFT: transformers' default attention
    model = get_peft_model(
        model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=16)
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=trainer.settings.lr
    )
    tokenizer = load_backbone(model_spec).tokenizer
    rows = [
        json.loads(line)
        for line in (ROOT / "examples/data/sentiment/train.jsonl").read_text().splitlines()
    ]
    words = {"negative": " negative", "positive": " positive"}
    texts = [f"{r['text']}\nLabel:{words[r['label']]}" for r in rows]
    step_number = {"i": 0}

    def step():
        indices = trainer.step_indices(step_number["i"])
        step_number["i"] += 1
        enc = tokenizer([texts[i] for i in indices], return_tensors="pt", padding=True)
        enc = enc.to(device())
        labels = torch.full_like(enc.input_ids, -100)
        last = enc.attention_mask.sum(1) - 1
        rows = torch.arange(len(indices), device=labels.device)
        labels[rows, last] = enc.input_ids[rows, last]
        loss = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=["fp32", "bf16"],
        help="default: both where this machine computes bf16 natively, else fp32 only",
    )
    parser.add_argument(
        "--bucketing",
        type=int,
        default=0,
        help="softprompt's train.length_bucketing (batches per window)",
    )
    parser.add_argument(
        "--model", default=MODEL, help="model spec (alias, local dir, ...) for both sides"
    )
    args = parser.parse_args()
    print(machine())
    print(f"model: {args.model}")
    for precision in args.precision or default_precisions(["fp32", "bf16"]):
        trainer = softprompt_trainer(precision, args.bucketing, args.model)
        steps = {
            "softprompt": softprompt_step(trainer),
            "peft": peft_step(precision, trainer, args.model),
        }
        peaks = {}
        for name, step in steps.items():  # step 0 for both: the same batch
            with saved_activation_peak() as meter:
                step()
            peaks[name] = meter.peak
        times = alternate(steps, args.rounds, args.steps)
        speed = {name: BATCH / median(t) for name, t in times.items()}
        print(
            f"{precision}: softprompt {speed['softprompt']:.2f} samples/s, "
            f"PEFT {speed['peft']:.2f} samples/s, "
            f"ratio {speed['softprompt'] / speed['peft']:.2f}x "
            "(targets: issue #8 >= 2.0x, issue #18 >= 3.0x);"
            f" peak activations {peaks['softprompt'] / 2**20:.0f} MiB vs "
            f"{peaks['peft'] / 2**20:.0f} MiB"
        )


if __name__ == "__main__":
    main()
