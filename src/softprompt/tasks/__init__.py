"""Task kinds, registered by name (the config's `task.type`): each module defines how a split
is encoded, the loss and the metrics (softprompt.tasks.base.Task); one line here registers it.
"""

from __future__ import annotations

import difflib

from softprompt.data import load_split
from softprompt.errors import ConfigError
from softprompt.models import Backbone
from softprompt.tasks.base import Task, TaskSettings, data_spec
from softprompt.tasks.classification import ClassificationTask
from softprompt.tasks.distill import DistillTask
from softprompt.tasks.distill_text import TextDistillTask
from softprompt.tasks.lm import LanguageModelingTask
from softprompt.tasks.self_study import SelfStudyTask
from softprompt.tasks.suffix import SuffixTask

TASKS: dict[str, type[Task]] = {}


def register_task(name: str, task_class: type[Task]) -> type[Task]:
    """Make a task kind available as `task.type: NAME`; its `settings` class validates the
    config's `task:` section."""
    TASKS[name] = task_class
    return task_class


def get_task(name: str) -> type[Task]:
    """The registered task kind called `name`, or a ConfigError listing the known ones."""
    if name not in TASKS:
        close = difflib.get_close_matches(str(name), list(TASKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown task type {name!r}{hint}; use one of {', '.join(TASKS)}")
    return TASKS[name]


def task_settings(name: str) -> type[TaskSettings]:
    """The class that validates a `task:` section of type `name`."""
    return get_task(name).settings


def build_task(task_config: TaskSettings, backbone: Backbone, prompt_length: int) -> Task:
    """The task object for one backbone, from a validated task config."""
    return get_task(task_config.type).from_config(task_config, backbone, prompt_length)


def encode_examples(task: Task, examples: list) -> list:
    """Encode a split once, up front, for the given task."""
    return task.encode_split(examples)


def load_task(
    task_config, backbone: Backbone, prompt_length: int, split: str, limit: int | None = None
) -> tuple[Task, list]:
    """The task for `backbone` and its encoded `split` (the first `limit` examples): what
    evaluation, transfer, explain, compress, the demo and the trainer all start from."""
    examples = load_split(data_spec(task_config), split)
    if limit:
        examples = examples[:limit]
    task = build_task(task_config, backbone, prompt_length)
    return task, task.encode_split(examples)


register_task("classification", ClassificationTask)
register_task("lm", LanguageModelingTask)
register_task("suffix", SuffixTask)
register_task("distill", DistillTask)
register_task("self_study", SelfStudyTask)
register_task("distill_text", TextDistillTask)
