import re

import pytest

from softprompt.config import apply_overrides, load_config, validate_config
from softprompt.errors import ConfigError

BASE = {
    "models": ["m"],
    "task": {"data": "d", "template": "{text}", "verbalizer": {"a": " yes", "b": " no"}},
}


def _with(**sections):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def test_key_typo_suggests_the_closest_key():
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr' \(did you mean 'train.lr'\?\)"):
        validate_config(_with(train={"lrr": 0.1}))


def test_missing_and_out_of_range_values_name_the_key():
    with pytest.raises(ConfigError, match="missing required key 'task'"):
        validate_config({"models": ["m"]})
    with pytest.raises(ConfigError, match="prompt.length"):
        validate_config(_with(prompt={"length": 0}))
    with pytest.raises(ConfigError, match="train.lr"):
        validate_config(_with(train={"lr": 0}))


def test_batch_must_be_a_multiple_of_the_micro_batch():
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        validate_config(_with(train={"batch_size": 8, "micro_batch_size": 3}))
    config = validate_config(_with(train={"batch_size": 8, "micro_batch_size": 2}))
    assert config.train.accumulation_steps == 4


def test_fractional_warmup_becomes_real_steps():
    config = validate_config(_with(train={"steps": 200, "warmup": 0.05}))
    assert config.train.warmup_steps == 10
    config = validate_config(_with(train={"steps": 200, "warmup": 7}))
    assert config.train.warmup_steps == 7
    with pytest.raises(ConfigError, match="warmup"):
        validate_config(_with(train={"steps": 5, "warmup": 7}))


def test_classification_needs_a_verbalizer():
    raw = _with()
    raw["task"].pop("verbalizer")
    with pytest.raises(ConfigError, match="needs a verbalizer"):
        validate_config(raw)


def test_overrides_parse_yaml_values_and_nest():
    raw = apply_overrides(
        {"train": {"lr": 0.3}}, ["train.lr=0.01", "prompt.length=4", "models=[a, b]"]
    )
    assert raw == {"train": {"lr": 0.01}, "prompt": {"length": 4}, "models": ["a", "b"]}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_load_config_takes_a_dict_as_well_as_a_path(tmp_path):
    import copy

    import yaml

    raw = _with(train={"steps": 30})
    kept = copy.deepcopy(raw)
    from_dict = load_config(raw, ["train.lr=0.05"])
    assert (from_dict.train.steps, from_dict.train.lr) == (30, 0.05)
    assert raw == kept  # the overrides did not reach into the caller's dict
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path, ["train.lr=0.05"]) == from_dict
    with pytest.raises(ConfigError, match=r"^config: train.lr"):
        load_config(_with(train={"lr": -1}))


def test_a_set_error_names_the_override_not_the_file(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_with(train={"steps": 10})))
    cases = {
        "train.lr=-1": r"^--set train.lr=-1: train.lr: Input should be greater than 0",
        "train.lrr=1": r"^--set train.lrr=1: unknown key 'train.lrr' \(did you mean 'train.lr'",
        "train.warmup=20": r"^--set train.warmup=20: train: warmup \(20 steps\) is longer",
        "method=nope": r"^--set method=nope: method: unknown method 'nope'",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(path, ["train.seed=3", override, "prompt.length=4"])
    path.write_text(yaml.safe_dump(_with(train={"steps": 10, "lr": -1})))
    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(path))}: train.lr"
    ):  # the file's own mistake
        load_config(path, ["train.seed=3", "train.steps=12"])


def test_example_configs_are_valid():
    from conftest import ROOT
    from softprompt.study import load_study

    paths = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        if path.name.startswith("study-"):
            study = load_study(path)
            assert load_config(study.config, study.set).task.data.startswith("examples/data/")
        else:
            assert load_config(path).task.data.startswith("examples/data/")
