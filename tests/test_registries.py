"""Methods and tasks are registered objects: a new method trains, saves and loads without any
change to the trainer, and configs and artifacts dispatch on the registered names."""

from __future__ import annotations

import pytest
import torch

from softprompt.config import config_class, validate_config
from softprompt.errors import ConfigError
from softprompt.methods import METHODS, get_method, load_artifact, register_method
from softprompt.methods.artifact import read_artifact
from softprompt.methods.base import Method, MethodSettings, TrainableModule
from softprompt.methods.prompt import SoftPrompt, load_prompt, save_prompt
from softprompt.steering.prompt import PromptSteering
from softprompt.tasks import TASKS, build_task
from softprompt.tasks.classification import ClassificationTask
from softprompt.tasks.distill import DistillTask
from softprompt.tasks.distill_text import TextDistillTask
from softprompt.tasks.lm import LanguageModelingTask
from softprompt.tasks.self_study import SelfStudyTask
from softprompt.tasks.suffix import SuffixTask
from softprompt.training.trainer import Trainer


class ScaledSettings(MethodSettings):
    """A toy method: a fixed random prompt times one learned scale per token."""

    start_scale: float = 1.0

    @property
    def input_length(self) -> int:
        return self.length


class ScaledPrompt(TrainableModule):
    def __init__(self, base: torch.Tensor, start: float) -> None:
        super().__init__()
        self.register_buffer("base", base)
        self.scale = torch.nn.Parameter(torch.full((base.shape[0], 1), start))

    def steering(self, model_index: int) -> PromptSteering:
        return PromptSteering(self.base * self.scale)

    def artifact(self, header: dict, backbones) -> SoftPrompt:
        embedding = (self.base * self.scale).detach().cpu()
        return ScaledArtifact(embedding=embedding, method="scaled", **header)


class ScaledArtifact(SoftPrompt):
    def save(self, path):
        return save_prompt(self, path)


class ScaledMethod(Method):
    name = "scaled"
    what = "scaled prompt"
    settings = ScaledSettings

    def build_module(self, settings, backbones, cross_model) -> ScaledPrompt:
        generator = torch.Generator().manual_seed(settings.seed)
        base = torch.randn(settings.length, backbones[0].hidden_size, generator=generator)
        return ScaledPrompt(base * 0.05, settings.start_scale)

    def load(self, path) -> ScaledArtifact:
        """The toy artifact is a prompt file whose header says method 'scaled'."""
        tensors, fields = read_artifact(path, "scaled", "scaled prompt")
        return ScaledArtifact(embedding=tensors["prompt"], method="scaled", **fields)


@pytest.fixture()
def scaled_method():
    register_method(ScaledMethod())
    config_class.cache_clear()
    yield
    METHODS.pop("scaled")
    config_class.cache_clear()


def test_a_method_registered_from_a_test_trains_without_changing_the_trainer(
    scaled_method, tiny_dirs, sentiment_dir, tmp_path
):
    config = validate_config(
        {
            "method": "scaled",
            "models": [str(tiny_dirs["llama"])],
            "task": {
                "data": str(sentiment_dir),
                "template": "{text} it was",
                "verbalizer": {"negative": " bad", "positive": " good"},
                "max_examples": 16,
            },
            "prompt": {"length": 4, "start_scale": 2.0},
            "train": {"steps": 3, "batch_size": 4, "lr": 0.5, "eval_every": 3},
        }
    )
    assert config.prompt.start_scale == 2.0  # the toy section validated the prompt keys
    summary = Trainer(config, tmp_path / "run", progress=False).run()
    assert summary["steps"] == 3
    artifact = load_artifact(tmp_path / "run" / "last.safetensors")
    assert artifact.method == "scaled" and artifact.length == 4
    assert "start_scale: 2.0" in (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="unknown key 'prompt.bogus'"):
        validate_config(
            {"method": "scaled", "task": {"data": "x", "type": "lm"}, "prompt": {"bogus": 1}}
        )


def test_the_trained_toy_parameters_moved(scaled_method, tiny_dirs, sentiment_dir, tmp_path):
    config = validate_config(
        {
            "method": "scaled",
            "models": [str(tiny_dirs["gpt2"])],
            "task": {"data": str(sentiment_dir), "type": "lm", "max_examples": 8},
            "prompt": {"length": 2},
            "train": {"steps": 2, "batch_size": 2, "lr": 0.5, "eval_every": 2},
        }
    )
    trainer = Trainer(config, tmp_path / "run", progress=False)
    state = trainer.fresh_state()
    before = state.module.scale.detach().clone()
    trainer.train_step(state)
    assert not torch.equal(before, state.module.scale.detach())


def test_unknown_methods_are_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown method 'prefx' \(did you mean 'prefix'\?\)"):
        get_method("prefx")
    with pytest.raises(ConfigError, match="config: method: unknown method 'lora'"):
        validate_config({"method": "lora", "task": {"data": "x", "type": "lm"}})


def test_method_checks_live_in_the_method_section():
    with pytest.raises(ConfigError, match="method 'prefix' trains on one model"):
        validate_config(
            {"method": "prefix", "models": ["a", "b"], "task": {"data": "x", "type": "lm"}}
        )
    with pytest.raises(ConfigError, match="a prefix starts from init 'random' or 'text'"):
        validate_config(
            {"method": "prefix", "task": {"data": "x", "type": "lm"}, "prompt": {"init": "vocab"}}
        )
    with pytest.raises(ConfigError, match="unknown key 'prompt.mlp_hidden'"):
        validate_config({"task": {"data": "x", "type": "lm"}, "prompt": {"mlp_hidden": 8}})


def test_load_artifact_dispatches_on_the_header_method(tiny, tmp_path):
    prompt = SoftPrompt(embedding=torch.randn(3, tiny["llama"].hidden_size))
    path = save_prompt(prompt, tmp_path / "p.safetensors")
    assert type(load_artifact(path)) is SoftPrompt
    assert torch.equal(load_prompt(path).embedding, prompt.embedding)


def test_task_kinds_are_registered_by_their_config_type(tiny, sentiment_dir):
    assert {
        "classification": ClassificationTask,
        "lm": LanguageModelingTask,
        "suffix": SuffixTask,
        "distill": DistillTask,
        "distill_text": TextDistillTask,
        "self_study": SelfStudyTask,
    } == TASKS
    config = validate_config({"task": {"data": str(sentiment_dir), "type": "suffix"}})
    task = build_task(config.task, tiny["llama"], 4)
    assert isinstance(task, SuffixTask) and task.window == config.task.max_length - 4
