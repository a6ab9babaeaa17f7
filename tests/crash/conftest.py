"""Shared pieces of the crash tests: a small training config and a fresh fault count."""

from __future__ import annotations

import pytest

from conftest import ROOT

SENTIMENT = ROOT / "examples" / "data" / "sentiment"


@pytest.fixture(autouse=True)
def fresh_fault_count():
    """Each test's fault plan counts its write steps from its own first one."""
    import softprompt.files as files

    files._faults.update(plan=None, count=0)


def train_config(**train):
    """A tiny training run on the sample sentiment data."""
    from softprompt.config import validate_config

    return validate_config(
        {
            "models": ["tiny"],
            "task": {
                "data": str(SENTIMENT),
                "template": "review: {text} sentiment:",
                "verbalizer": {"negative": " bad", "positive": " good"},
                "max_examples": 8,
            },
            "prompt": {"length": 4, "init": "random", "seed": 1},
            "train": {"batch_size": 4, "lr": 0.1, "eval_every": 100, "seed": 7, **train},
        }
    )
