"""Resuming a run as what it is: the run's folder must exist and hold its config.yaml, and the
config it continues with must be the run's own, unless the change is allowed and recorded.

A run's config.yaml is the resolved config it was started with. Resuming with another config
(more steps, another learning rate) would silently make the run something it does not say it
is, so a changed config is refused; with `allow_changes` it is used, and each change is appended
to config-changes.jsonl with the step it took effect at.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import yaml

from softprompt.config import TrainConfig, config_to_dict, validate_config
from softprompt.errors import ConfigError, UsageError
from softprompt.files import append_line
from softprompt.training.console import warn

CONFIG_FILE = "config.yaml"
CHANGES_FILE = "config-changes.jsonl"
_NOT_SET = object()


def require_run(path: str | Path) -> Path:
    """The config.yaml of the run folder `path`; a usage error when there is no run to resume
    (resuming a folder that is not there would otherwise quietly start a new run)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(
            f"cannot resume {folder}: no such folder; give the --out folder of an earlier run, "
            "or start a new run with --out"
        )
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise UsageError(
            f"cannot resume {folder}: it has no {CONFIG_FILE}, so it is not a training run "
            "folder; give the --out folder of an earlier run"
        )
    return config_path


def run_config(path: str | Path) -> TrainConfig:
    """The config the run in folder `path` was trained with (validated as configs are now)."""
    config_path = require_run(path)
    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {config_path}: not valid YAML") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {config_path}: the top level must be a mapping of keys")
    return validate_config(raw, source=str(config_path))


def config_changes(run: TrainConfig, given: TrainConfig) -> dict[str, dict]:
    """{dotted key: {"run": value in the run, "now": value given}} for every key that differs,
    in the order of the config's keys (a key set on one side only has the value None)."""
    before, after = _flat(config_to_dict(run)), _flat(config_to_dict(given))
    changes = {}
    for key in [*after, *(k for k in before if k not in after)]:
        old, new = before.get(key, _NOT_SET), after.get(key, _NOT_SET)
        if old != new:
            changes[key] = {"run": _plain(old), "now": _plain(new)}
    return changes


def check_resume(path: str | Path, given: TrainConfig, allow_changes: bool) -> dict[str, dict]:
    """The changes of `given` from the run's own config; a usage error naming the first of them
    unless `allow_changes`."""
    changes = config_changes(run_config(path), given)
    if changes and not allow_changes:
        raise UsageError(
            f"{path}: {describe_changes(changes)}; resume without changes, or pass "
            "--allow-changes to record them"
        )
    return changes


def describe_changes(changes: dict[str, dict], shown: int = 3) -> str:
    """'train.steps is 100 here but 80 in the run (also train.lr)': the first change in full,
    the next few by key."""
    keys = list(changes)
    first = changes[keys[0]]
    text = f"{keys[0]} is {_shown(first['now'])} here but {_shown(first['run'])} in the run"
    if len(keys) > 1:
        more = ", ".join(keys[1 : 1 + shown]) + (", ..." if len(keys) > 1 + shown else "")
        text += f" (also {more})"
    return text


def record_changes(path: str | Path, changes: dict[str, dict], step: int) -> Path:
    """Append the allowed changes, with the step they take effect at, to config-changes.jsonl,
    and say so on stderr; returns the file."""
    record_path = Path(path) / CHANGES_FILE
    record = {
        "step": step,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "changes": changes,
    }
    handle = os.open(record_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        append_line(handle, record, record_path)
        os.fsync(handle)
    finally:
        os.close(handle)
    shown = "; ".join(
        f"{key} {_shown(value['run'])} -> {_shown(value['now'])}" for key, value in changes.items()
    )
    warn(f"resuming at step {step} with a changed config: {shown} (recorded in {record_path})")
    return record_path


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    """A nested config dict as {dotted key: leaf value}; lists and empty dicts are leaves."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    flat: dict[str, object] = {}
    for key, child in value.items():
        flat.update(_flat(child, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _plain(value: object) -> object:
    return None if value is _NOT_SET else value


def _shown(value: object) -> str:
    """A config value as the message shows it: JSON (so text is quoted), `not set` for None."""
    return "not set" if value is None else json.dumps(value, ensure_ascii=False)
