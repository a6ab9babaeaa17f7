"""Training configuration: YAML validated by pydantic, failing early with the bad key named."""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from softprompt.errors import ConfigError
from softprompt.methods import get_method
from softprompt.methods.prompt import PromptSettings
from softprompt.tasks import task_settings
from softprompt.tasks.base import TaskSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainSettings(_Strict):
    """Optimisation, evaluation and checkpointing."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    lr: float | Literal["auto"] = 0.3  # "auto": a range test picks it (training/lr_finder.py)
    lr_found: float | None = Field(None, gt=0)  # what `lr: auto` found; the run records it
    lr_search_steps: int = Field(20, ge=10)
    lr_search_range: tuple[float, float] = (1e-4, 3.0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup: int | float = Field(0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    eval_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    best_metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    early_stopping_patience: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)
    seed: int = 42
    length_bucketing: int = Field(0, ge=0)
    device: str = "auto"
    devices: list[str] | None = None
    shard: Literal["none", "fsdp"] = "none"  # frozen weights over a launch's processes (FSDP2)
    gradient_checkpointing: bool = False  # recompute each layer in backward: less memory
    best_model: str | None = None
    report_to: list[Literal["tensorboard", "wandb", "none"]] = Field(default_factory=list)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_aliases(cls, value: object) -> object:
        aliases = {"float32": "fp32", "bfloat16": "bf16"}
        return aliases.get(value, value) if isinstance(value, str) else value

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_value(cls, value: object) -> float | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError("give a number (e.g. 0.01) or auto") from None
        if not number > 0:
            raise ValueError("Input should be greater than 0 (or auto)")
        return number

    @field_validator("lr_search_range")
    @classmethod
    def _range_rises(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] < value[1]:
            raise ValueError("give [lowest, highest] rates, both above 0, lowest first")
        return value

    @field_validator("warmup")
    @classmethod
    def _warmup_kind(cls, value: int | float) -> int | float:
        if isinstance(value, float) and value > 1.0:
            raise ValueError("a fractional warmup must be between 0 and 1 (or give whole steps)")
        return value

    @model_validator(mode="after")
    def _batches_add_up(self) -> TrainSettings:
        micro = self.micro_batch_size or self.batch_size
        if micro > self.batch_size or self.batch_size % micro:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({micro})"
            )
        if isinstance(self.warmup, int) and self.warmup > self.steps:
            raise ValueError(f"warmup ({self.warmup} steps) is longer than steps ({self.steps})")
        if self.lr == "auto" and self.lr_found is None and self.steps < self.lr_search_steps:
            raise ValueError(
                f"lr auto searches {self.lr_search_steps} steps (lr_search_steps), more than the "
                f"run's {self.steps}; give lr a number (e.g. 0.01) for so short a run"
            )
        return self

    @property
    def rate(self) -> float:
        """The learning rate the run uses: `lr`, or the rate `lr: auto` found."""
        if self.lr != "auto":
            return float(self.lr)
        if self.lr_found is None:
            raise ValueError("lr auto has not been searched yet (no lr_found)")
        return self.lr_found

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.batch_size

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch

    @property
    def warmup_steps(self) -> int:
        """Warmup in whole optimizer steps: a fraction becomes round(fraction * steps)."""
        if isinstance(self.warmup, float):
            return round(self.warmup * self.steps)
        return int(self.warmup)


class CrossModelSettings(_Strict):
    """Joint training on models of different hidden sizes: the prompt lives in the first
    model's space and reaches each other model through a linear map fitted on the words the
    vocabularies share."""

    maps: Literal["fixed", "learned"] = "fixed"
    alignment: Literal["procrustes", "ridge"] = "procrustes"
    lr: float = Field(1e-4, gt=0)  # learned maps only: their AdamW learning rate


class TrainConfig(_Strict):
    """A whole training run. `prompt` is the section of the run's method
    (softprompt.methods) and `task` that of its task kind (softprompt.tasks);
    `validate_config` picks the classes that validate them."""

    method: str = "prompt"
    models: list[str] = Field(default_factory=lambda: ["smollm2-135m"])
    model_weights: list[float] | None = None
    trust_remote_code: bool = False
    task: TaskSettings
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    cross_model: CrossModelSettings = Field(default_factory=CrossModelSettings)

    @field_validator("models")
    @classmethod
    def _some_model(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(
                "the list is empty; name at least one model (a bundled alias such as "
                "smollm2-135m, a model folder, a .gguf file or a hub id), or leave the key out "
                "for the default"
            )
        return value

    @field_validator("cross_model", mode="before")
    @classmethod
    def _maps_shorthand(cls, value: object) -> object:
        return {"maps": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _weights_match_models(self) -> TrainConfig:
        if self.model_weights is not None:
            if len(self.model_weights) != len(self.models):
                raise ValueError(
                    f"model_weights has {len(self.model_weights)} entries for "
                    f"{len(self.models)} models"
                )
            if any(w < 0 for w in self.model_weights) or sum(self.model_weights) <= 0:
                raise ValueError("model_weights must be non-negative and not all zero")
        return self

    @model_validator(mode="after")
    def _method_checks(self) -> TrainConfig:
        self.prompt.check_run(self.models)
        self.prompt.link_task(self.task)
        return self

    @model_validator(mode="after")
    def _best_model_is_trained(self) -> TrainConfig:
        best = self.train.best_model
        if best is not None and best not in self.models:
            raise ValueError(
                f"train.best_model {best!r} is not one of the models ({', '.join(self.models)})"
            )
        return self


@functools.cache
def config_class(method: str, task: str = "classification") -> type[TrainConfig]:
    """The TrainConfig whose `prompt` section is validated by `method`'s settings class and
    whose `task` section by the task kind's."""
    settings = get_method(method).settings
    return create_model(
        f"{method.title()}{task.title()}TrainConfig",
        __base__=TrainConfig,
        prompt=(settings, Field(default_factory=settings)),
        task=(task_settings(task), ...),
    )


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides (values parsed as YAML) to a nested config dict."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def load_config(
    source: str | Path | dict | None, overrides: list[str] | None = None
) -> TrainConfig:
    """Read a YAML config file (or take a dict, or start empty), apply `key=value` overrides,
    validate. An invalid value that an override brought in is blamed on `--set KEY=VALUE`,
    anything else on the file."""
    raw = _read_raw(source)
    name = str(source) if isinstance(source, (str, Path)) else "config"
    items = list(overrides or [])
    try:
        return _validated(apply_overrides(copy.deepcopy(raw), items))
    except _Invalid as problem:
        culprit = _blamed_override(raw, items, problem)
        where = f"--set {culprit}" if culprit is not None else name
        raise ConfigError(f"{where}: {problem.message}") from problem.__cause__


def _read_raw(source: str | Path | dict | None) -> dict:
    """The config as a dict (a copy of a dict given, so overrides leave the caller's alone)."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return copy.deepcopy(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path}{where}: not valid YAML") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping of keys")
    return raw


class _Invalid(Exception):
    """A config that does not validate: where (`loc`, the key path) and the one-line reason."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


def _validated(raw: dict) -> TrainConfig:
    """`raw` validated by its method's config class, or _Invalid naming the key."""
    method = raw.get("method", "prompt")
    section = raw.get("task")
    task = section.get("type", "classification") if isinstance(section, dict) else "classification"
    try:
        get_method(str(method))
    except ConfigError as exc:
        raise _Invalid(("method",), f"method: {exc}") from exc
    try:
        model = config_class(str(method), str(task))
    except ConfigError as exc:
        raise _Invalid(("task", "type"), f"task.type: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        loc = tuple(str(part) for part in exc.errors()[0]["loc"])
        raise _Invalid(loc, describe_error(exc, model)) from exc


def _blamed_override(raw: dict, items: list[str], problem: _Invalid) -> str | None:
    """The override that caused `problem`: the last one on a key related to the problem's key
    (one is a prefix of the other) without which the problem goes away or changes."""
    for index in reversed(range(len(items))):
        key = tuple(items[index].partition("=")[0].strip().split("."))
        shared = min(len(key), len(problem.loc))
        if key[:shared] != problem.loc[:shared]:
            continue
        others = items[:index] + items[index + 1 :]
        if _problem(raw, others) != (problem.loc, problem.message):
            return items[index]
    return None


def _problem(raw: dict, items: list[str]) -> tuple[tuple[str, ...], str] | None:
    """Where and why `raw` with the overrides `items` is invalid; None when it is valid."""
    try:
        _validated(apply_overrides(copy.deepcopy(raw), items))
    except _Invalid as problem:
        return problem.loc, problem.message
    except ConfigError as exc:  # these overrides do not even apply
        return (), str(exc)
    return None


def validate_config(raw: dict, source: str = "config") -> TrainConfig:
    """A validated config for the method that `raw` names (default: prompt)."""
    try:
        return _validated(raw)
    except _Invalid as problem:
        raise ConfigError(f"{source}: {problem.message}") from problem.__cause__


def describe_error(exc: ValidationError, root: type[BaseModel] | None = None) -> str:
    """The first validation problem as one line, naming the key and suggesting a fix."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1], root or TrainConfig)
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
        hint = f" (did you mean {'.'.join([*loc[:-1], close[0]])!r}?)" if close else ""
        return f"unknown key {key!r}{hint}; known keys here: {', '.join(known)}"
    if error["type"] == "missing":
        return f"missing required key {key!r}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message} (got {error.get('input')!r})" if loc else message


def _known_keys(section: list[str], model: type[BaseModel]) -> list[str]:
    for part in section:
        annotation = model.model_fields.get(part)
        if annotation is None or not isinstance(annotation.annotation, type):
            return []
        model = annotation.annotation
    return list(model.model_fields)


def config_to_dict(config: TrainConfig) -> dict:
    return config.model_dump(mode="json")
