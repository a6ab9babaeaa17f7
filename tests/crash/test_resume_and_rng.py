"""A changed learning rate applied on resume, the prefix encoder's own RNG, and the current
prompt of an encoded method (test code, out of the package)."""

from __future__ import annotations

import pytest
import torch

from crash.conftest import train_config
from reference import current_prompt
from softprompt.files import (
    read_json_lines,
)

# --- training -------------------------------------------------------------------------------


def test_a_changed_learning_rate_is_applied_after_resume(tiny, tmp_path):
    from softprompt.training.trainer import Trainer

    first = train_config(steps=2, schedule="constant", warmup=0)
    Trainer(first, tmp_path, backbones=[tiny["llama"]], progress=False).run()
    changed = train_config(steps=4, schedule="linear", warmup=0, lr=0.05)
    trainer = Trainer(changed, tmp_path, backbones=[tiny["llama"]], progress=False)
    trainer.run(resume=True, allow_changes=True)
    lrs = {r["step"]: r["lr"] for r in read_json_lines(tmp_path / "metrics.jsonl") if "lr" in r}
    assert lrs[1] == lrs[2] == 0.1
    # linear decay over 4 steps from the new 0.05: after step 3 a quarter of it is left, then 0
    assert lrs[3] == pytest.approx(0.05 * 0.25)
    assert lrs[4] == pytest.approx(0.0)
    changes = read_json_lines(tmp_path / "config-changes.jsonl")
    assert changes[0]["changes"]["train.lr"] == {"run": 0.1, "now": 0.05}


def test_the_prefix_encoder_leaves_the_global_rng_alone():
    from softprompt.methods.prefix import PrefixEncoder

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = PrefixEncoder((2, 1, 4), 3, hidden=8, seed=5)
    assert torch.equal(torch.rand(3), expected)
    second = PrefixEncoder((2, 1, 4), 3, hidden=8, seed=5)
    assert torch.equal(first.embedding.weight, second.embedding.weight)  # its own start


def test_the_current_prompt_of_p_tuning_is_the_encoder_output(tiny, tmp_path):
    from softprompt.config import validate_config
    from softprompt.training.trainer import Trainer

    raw = train_config(steps=1).model_dump(mode="json")
    raw["method"] = "p_tuning"
    raw["prompt"] = {**raw["prompt"], "encoder_hidden_size": 8}
    trainer = Trainer(validate_config(raw), tmp_path, backbones=[tiny["llama"]], progress=False)
    module = trainer.fresh_state().module.eval()
    with torch.no_grad():
        prompt = current_prompt(module)
    assert prompt.shape == module.embedding.shape
    assert not torch.equal(prompt, module.embedding)  # the encoder's inputs are not the prompt
    assert torch.equal(prompt, trainer.artifact(trainer.fresh_state()).embedding)


def test_a_run_killed_after_its_last_checkpoint_resumes_to_the_same_summary(tiny, tmp_path):
    from softprompt.training.trainer import Trainer

    config = train_config(steps=4, eval_every=2, checkpoint_every=2)
    whole = Trainer(config, tmp_path, backbones=[tiny["llama"]], progress=False).run()
    (tmp_path / "summary.json").unlink()  # as a kill between the last checkpoint and it leaves
    again = Trainer(config, tmp_path, backbones=[tiny["llama"]], progress=False)
    resumed = again.run(resume=True)
    for key in ("steps", "best_step", "best_value", "dev", "best_dev", "stopped_early"):
        assert resumed[key] == whole[key], key
    assert resumed["dev"] is not None
    evals = [r for r in read_json_lines(tmp_path / "metrics.jsonl") if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]  # the last evaluation is not logged twice
