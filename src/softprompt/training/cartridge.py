"""`softprompt cartridge DOC...`: a cartridge trained from documents by self-study in one call.

The short form of a training config with `method: cartridge` and `task: self_study`; the run
folder (teacher turns, checkpoints, metrics) sits beside the output file (`C.run/`), so a run cut
short continues with `resume=True`, and the best cartridge is copied to `out` at the end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from softprompt.config import load_config
from softprompt.errors import UsageError
from softprompt.files import atomic_file
from softprompt.models import Backbone
from softprompt.text.corpus import read_corpus
from softprompt.training.trainer import train


def cartridge_config(
    documents: list[str | os.PathLike],
    *,
    model: str | None = None,
    length: int = 256,
    steps: int = 200,
    overrides: list[str] | None = None,
):
    """The training config of the short form (every key can still be changed: `overrides`,
    `key=value` as with `--set`)."""
    if not documents:
        raise UsageError("name at least one document to train a cartridge from")
    raw = {
        "method": "cartridge",
        "models": [model or "smollm2-135m"],
        "task": {"type": "self_study", "data": [str(d) for d in documents]},
        "prompt": {"length": length, "frozen": 1},
        "train": {
            "steps": steps,
            "batch_size": 4,
            "lr": 0.02,
            "schedule": "cosine",
            "warmup": 0.05,
            "eval_every": max(1, steps // 4),
            "checkpoint_every": max(1, steps // 4),
        },
    }
    return load_config(raw, overrides or [])


def train_cartridge(
    documents: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    model: str | None = None,
    length: int = 256,
    steps: int = 200,
    overrides: list[str] | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    backbones: list[Backbone] | None = None,
) -> dict:
    """Train a cartridge of `length` positions on `documents` for `steps` steps and write it to
    `out` (a prefix `.safetensors` file); returns the run's summary with `cartridge` added."""
    target = Path(out)
    if target.suffix != ".safetensors":
        raise UsageError(f"--out {target}: a cartridge is a .safetensors file; name it so")
    read_corpus([str(d) for d in documents])  # an empty or missing document: before any model
    config = cartridge_config(
        documents, model=model, length=length, steps=steps, overrides=overrides
    )
    folder = Path(run_dir) if run_dir is not None else target.with_suffix(".run")
    summary = train(config, folder, resume=resume, progress=progress, backbones=backbones)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as staging:
        shutil.copyfile(folder / "prompt.safetensors", staging)
    return {**summary, "cartridge": str(target)}
