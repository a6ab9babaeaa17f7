"""Joint training cost vs the number of models M: step time and peak saved activations.

Peak activations are counted exactly (autograd saved tensors), for softprompt's model-by-model
backward and for the naive single backward over the summed loss.
Run: .venv/bin/python benchmarks/bench_joint.py [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, machine

from profiling import saved_activation_peak
from softprompt.config import validate_config
from softprompt.models.tiny import corpus_texts, tiny_family
from softprompt.training.trainer import Trainer


def config(models: list[str]):
    return validate_config(
        {
            "models": models,
            "task": {
                "data": str(ROOT / "examples/data/sentiment"),
                "template": "{text} it was {label} .",
                "verbalizer": {"negative": " bad", "positive": " good"},
            },
            "prompt": {"length": 16},
            "train": {"batch_size": 16, "seed": 0},
        }
    )


def naive_peak(trainer: Trainer, prompt: torch.Tensor, indices: list[int]) -> int:
    with saved_activation_peak() as meter:
        total = 0
        for slot in trainer.slots:
            batch = slot.task.collate([slot.train[i] for i in indices])
            scores = slot.task.class_scores(prompt, batch)
            total = total + slot.task.losses(scores, batch.labels).mean()
        total.backward()
    return meter.peak


def main(steps: int = 10) -> None:
    print(machine())
    with tempfile.TemporaryDirectory() as folder:
        dirs = [
            str(d)
            for d in tiny_family(
                folder, corpus_texts(ROOT / "examples/data"), 4, "bert", hidden=128
            )
        ]
        print("M  step ms (median)  peak activations MiB  naive single-backward MiB")
        for count in (1, 2, 4):
            trainer = Trainer(config(dirs[:count]), Path(folder) / f"run{count}", progress=False)
            state = trainer.fresh_state()
            times = []
            for step in range(steps):
                started = time.perf_counter()
                with saved_activation_peak() as meter:
                    trainer.accumulate_gradients(state.module.embedding, trainer.step_indices(step))
                times.append(time.perf_counter() - started)
                state.module.embedding.grad = None
            naive = naive_peak(trainer, state.module.embedding, trainer.step_indices(0))
            print(
                f"{count}  {1000 * statistics.median(times):14.1f}  "
                f"{meter.peak / 2**20:20.2f}  {naive / 2**20:25.2f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per M")
    main(parser.parse_args().steps)
