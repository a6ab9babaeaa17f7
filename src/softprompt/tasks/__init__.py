"""Task kinds, registered by name (the config's `task.type`): each module defines how a split
is encoded, the loss and the metrics (softprompt.tasks.base.Task); one line here registers it.
"""

from __future__ import annotations

from softprompt.data import load_split
from softprompt.models import Backbone
from softprompt.tasks.base import Task, data_spec
from softprompt.tasks.classification import ClassificationTask
from softprompt.tasks.lm import LanguageModelingTask
from softprompt.tasks.suffix import SuffixTask

TASKS: dict[str, type[Task]] = {}


def register_task(name: str, task_class: type[Task]) -> type[Task]:
    """Make a task kind available as `task.type: NAME`."""
    TASKS[name] = task_class
    return task_class


def build_task(task_config, backbone: Backbone, prompt_length: int) -> Task:
    """The task object for one backbone, from a validated task config."""
    return TASKS[task_config.type].from_config(task_config, backbone, prompt_length)


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
