"""Property-based tests: arbitrary input gives a result or one of the catalogued errors."""

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from softprompt.config import load_config, validate_config
from softprompt.data import DataSpec, Example, load_split
from softprompt.errors import ConfigError, DataError, PromptFileError
from softprompt.methods.prompt import load_prompt
from softprompt.tasks.classification import ClassificationTask, check_template

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@FAST
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".csv", ".txt"]))
def test_data_readers_never_crash(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"train{suffix}").write_bytes(content)
        label = None if suffix == ".txt" else "label"
        try:
            examples = load_split(DataSpec(folder, label_field=label), "train")
        except DataError:
            return
        assert examples and all(isinstance(e.text, str) for e in examples)


@FAST
@given(lines=st.lists(json_values.map(lambda v: __import__("json").dumps(v)), max_size=5))
def test_jsonl_with_arbitrary_json_values(lines):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "train.jsonl").write_text("\n".join(lines))
        try:
            examples = load_split(DataSpec(folder), "train")
        except DataError:
            return
        assert all(isinstance(e.label, str) for e in examples)


@FAST
@given(template=st.text(max_size=40), text=st.text(max_size=40))
def test_templates_render_or_fail_cleanly(tiny, template, text):
    try:
        check_template(template)
        task = ClassificationTask(
            tiny["llama"], template, {"a": " good", "b": " bad"}, max_length=64
        )
        encoded = task.encode(Example(text, "a", where="fuzz"))
    except (ConfigError, DataError):
        return
    ids, positions, _ = encoded.rows[0]
    assert len(ids) <= 64 and 0 <= positions[0] < len(ids)


@FAST
@given(
    raw=st.dictionaries(
        st.sampled_from(["models", "task", "prompt", "train", "method", "x"]),
        json_values,
        max_size=5,
    )
)
def test_config_validation_never_crashes(raw):
    try:
        config = validate_config(raw)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert config.models


@FAST
@given(text=st.text(max_size=200))
def test_config_files_never_crash(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError:
            return


@FAST
@given(content=st.binary(max_size=200))
def test_arbitrary_bytes_are_not_prompts(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.safetensors"
        path.write_bytes(content)
        try:
            load_prompt(path)
        except PromptFileError:
            return


@FAST
@given(
    metadata=st.dictionaries(
        st.sampled_from(
            ["format", "format_version", "method", "models", "task", "init", "training"]
        ),
        st.text(max_size=30),
        max_size=7,
    ),
    shape=st.sampled_from([(2, 4), (4,), (0, 4), (1, 1), (2, 2, 2)]),
)
def test_arbitrary_metadata_is_validated(metadata, shape):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.safetensors"
        save_file({"prompt": torch.ones(shape)}, path, metadata=metadata)
        try:
            prompt = load_prompt(path)
        except PromptFileError:
            return
        assert prompt.embedding.ndim == 2 and isinstance(prompt.models, list)
