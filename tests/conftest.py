"""Tiny random models of each supported family, built in code and saved to a temp folder so that
tests exercise the real loading path (`load_backbone` on a local directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt.models.tiny import FAMILIES, save_tiny

ROOT = Path(__file__).resolve().parents[1]
SENTIMENT = ROOT / "examples" / "data" / "sentiment"


def corpus() -> list[str]:
    """Texts of the sample sentiment data plus template and label words: the tiny vocabulary."""
    texts = []
    for split in ("train", "dev", "test"):
        for line in (SENTIMENT / f"{split}.jsonl").read_text().splitlines():
            texts.append(json.loads(line)["text"])
    texts.append("review sentiment label : ? ! . , ' positive negative good bad great awful it was")
    return texts


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny model directory per family."""
    root = tmp_path_factory.mktemp("tiny-models")
    texts = corpus()
    return {family: save_tiny(root / family, texts, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny(tiny_dirs):
    """Loaded tiny backbones by family (loaded once per session; they are frozen)."""
    from softprompt.models import load_backbone

    return {family: load_backbone(str(path)) for family, path in tiny_dirs.items()}


@pytest.fixture()
def sentiment_dir() -> Path:
    return SENTIMENT


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def interrupt_at(trainer, step: int) -> None:
    """Make `trainer.run()` stop with a KeyboardInterrupt when it reaches `step`, as Ctrl-C
    would (its checkpoints so far stay on disk)."""
    original = trainer.train_step

    def train_step(state):
        if state.step == step:
            raise KeyboardInterrupt
        return original(state)

    trainer.train_step = train_step
