"""Adding a task is one module and one registration line: a toy task kind registered from this
file, with a config key of its own, trains, saves, loads and evaluates through the unchanged
trainer and session, and its section is validated by its own settings class."""

from __future__ import annotations

import dataclasses

import pytest

from softprompt.config import config_class, validate_config
from softprompt.errors import ConfigError
from softprompt.methods import load_artifact
from softprompt.session import Session
from softprompt.tasks import TASKS, register_task
from softprompt.tasks.base import TaskSettings
from softprompt.tasks.lm import LanguageModelingTask
from softprompt.training.trainer import Trainer


class ShoutSettings(TaskSettings):
    """The toy task's own key: whether each text's words are put in reverse order ("shouted
    backwards") before it is encoded."""

    shout: bool = True


class ShoutTask(LanguageModelingTask):
    """Language modelling on the texts, their words reversed when the config says
    `shout: true`."""

    settings = ShoutSettings

    @classmethod
    def from_config(cls, task_config, backbone, prompt_length):
        task = cls(backbone, max_length=task_config.max_length, prompt_length=prompt_length)
        task.shout = task_config.shout
        return task

    def encode_split(self, examples):
        if self.shout:
            examples = [
                dataclasses.replace(e, text=" ".join(reversed(e.text.split()))) for e in examples
            ]
        return super().encode_split(examples)


@pytest.fixture()
def shout_task():
    register_task("shout", ShoutTask)
    config_class.cache_clear()
    yield
    TASKS.pop("shout")
    config_class.cache_clear()


def _config(model_dir, data_dir, **task):
    return validate_config(
        {
            "models": [str(model_dir)],
            "task": {"type": "shout", "data": str(data_dir), "max_examples": 12, **task},
            "prompt": {"length": 2, "init": "random"},
            "train": {"steps": 2, "batch_size": 2, "lr": 0.1, "eval_every": 2},
        }
    )


def test_a_task_registered_from_a_test_trains_saves_loads_and_evaluates(
    shout_task, tiny_dirs, sentiment_dir, tmp_path
):
    config = _config(tiny_dirs["gpt2"], sentiment_dir, shout=False)
    assert type(config.task) is ShoutSettings and config.task.shout is False
    summary = Trainer(config, tmp_path / "run", progress=False).run()
    assert summary["steps"] == 2
    artifact = load_artifact(tmp_path / "run" / "prompt.safetensors")
    assert artifact.task["type"] == "shout" and artifact.task["shout"] is False
    session = Session(tmp_path / "run" / "prompt.safetensors", str(tiny_dirs["gpt2"]))
    quiet = session.evaluate(str(sentiment_dir), split="test")
    assert quiet["loss"] > 0
    assert session.task_config(str(sentiment_dir)).shout is False  # the recorded key is used


def test_the_task_s_own_key_reaches_the_task(shout_task, tiny_dirs, sentiment_dir, tmp_path):
    Trainer(_config(tiny_dirs["gpt2"], sentiment_dir), tmp_path / "loud", progress=False).run()
    Trainer(
        _config(tiny_dirs["gpt2"], sentiment_dir, shout=False), tmp_path / "quiet", progress=False
    ).run()
    losses = {
        name: Session(tmp_path / name / "prompt.safetensors", str(tiny_dirs["gpt2"])).evaluate(
            str(sentiment_dir), split="test"
        )["loss"]
        for name in ("loud", "quiet")
    }
    assert losses["loud"] != pytest.approx(losses["quiet"])


def test_a_task_section_is_validated_by_its_kind_s_class(shout_task, sentiment_dir):
    with pytest.raises(ConfigError, match=r"unknown key 'task.shuot' \(did you mean 'task.shout'"):
        validate_config({"task": {"type": "shout", "data": str(sentiment_dir), "shuot": 1}})
    with pytest.raises(ConfigError, match="unknown key 'task.shout'"):
        validate_config({"task": {"type": "lm", "data": str(sentiment_dir), "shout": True}})
    with pytest.raises(ConfigError, match=r"unknown task type 'shuot' \(did you mean 'shout'\?\)"):
        validate_config({"task": {"type": "shuot", "data": str(sentiment_dir)}})
