"""The main job: train a soft prompt on the bundled default model and the sample sentiment task,
and show how much it improves on the bare model (zero-shot) on the held-out test split."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from softprompt.config import load_config
from softprompt.errors import SoftpromptError
from softprompt.evaluation import evaluate_task
from softprompt.methods.prompt import load_prompt
from softprompt.tasks import load_task
from softprompt.training.trainer import Trainer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DEMO_CONFIG = EXAMPLES / "configs" / "sentiment.yaml"


def run_demo(
    out_dir: str | Path | None = None, overrides: list[str] | None = None, progress: bool = True
) -> dict:
    """Zero-shot test accuracy, train, trained test accuracy; returns the numbers and run dir."""
    if not DEMO_CONFIG.is_file():
        raise SoftpromptError(
            f"demo config not found at {DEMO_CONFIG}; run the demo from a source checkout "
            "(make demo)"
        )
    started = time.perf_counter()
    data = str(EXAMPLES / "data" / "sentiment")
    config = load_config(DEMO_CONFIG, [f"task.data={data}", *(overrides or [])])
    run_dir = Path(out_dir or Path("runs") / f"demo-{datetime.now():%Y%m%d-%H%M%S}")
    trainer = Trainer(config, run_dir, progress=progress)
    slot = trainer.slots[0]
    _, test = load_task(config.task, slot.backbone, config.prompt.input_length, "test")
    zero_shot = evaluate_task(slot.task, None, test, config.train.eval_batch_size)
    trainer.run()
    best = load_prompt(run_dir / "prompt.safetensors")
    trained = evaluate_task(slot.task, best.embedding, test, config.train.eval_batch_size)
    return {
        "zero_shot_accuracy": zero_shot["accuracy"],
        "trained_accuracy": trained["accuracy"],
        "zero_shot_macro_f1": zero_shot["macro_f1"],
        "trained_macro_f1": trained["macro_f1"],
        "test_examples": trained["examples"],
        "model": config.models[0],
        "run_dir": str(run_dir),
        "seconds": time.perf_counter() - started,
    }
