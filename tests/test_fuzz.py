"""Property-based tests: arbitrary input gives a result or one of the catalogued errors."""

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from softprompt.config import load_config, validate_config
from softprompt.data import DataSpec, Example, load_split
from softprompt.errors import ConfigError, DataError, PromptFileError
from softprompt.methods.prompt import load_prompt
from softprompt.session import predict
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


AWKWARD_TEXTS = [
    "",
    "   ",
    "\n\t\r",
    "good 😃🎉👍🏽 great",
    "مرحبا بالعالم שלום עולם",
    "e\u0301te\u0301 cafe\u0301 n\u0303 a\u0308",
    "bad\x01\x07\x1b\x1f\x7f awful",
    "{text}",
    "{label} and {text_b}",
    "{{ good }} {",
    "}",
    "it was {great",
    "good " * 400,
    "[UNK] [MASK] [CLS] <s> </s>" * 40,
]
# valid text: no NUL, no lone surrogates (category Cs, not Unicode text; refused, see below)
NUL_FREE = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    max_size=300,
)


def assert_distributions(rows: list[dict], texts: list[str], labels: list[str]) -> None:
    """One row per text, each a probability distribution over the verbalizer's labels."""
    assert [row["text"] for row in rows] == texts
    for row in rows:
        probabilities = row["probabilities"]
        assert list(probabilities) == labels and row["label"] in labels
        assert all(0.0 <= p <= 1.0 for p in probabilities.values())
        assert abs(sum(probabilities.values()) - 1.0) < 1e-5


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_awkward_texts_are_classified(tiny, family):
    template = "review: {text} sentiment: {label}" if family == "bert" else "review: {text} :"
    verbalizer = {"negative": " bad", "positive": " good"}
    task = ClassificationTask(tiny[family], template, verbalizer, max_length=32)
    for text in AWKWARD_TEXTS:
        ids, positions, _ = task.encode(Example(text, where="fuzz"), with_label=False).rows[0]
        assert len(ids) <= 32 and 0 <= positions[0] < len(ids)
    rows = predict(None, AWKWARD_TEXTS, tiny[family], template=template, verbalizer=verbalizer)
    assert_distributions(rows, AWKWARD_TEXTS, ["negative", "positive"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(NUL_FREE | st.sampled_from(AWKWARD_TEXTS), min_size=1, max_size=4))
def test_arbitrary_texts_are_classified(tiny, texts):
    verbalizer = {"a": " good", "b": " bad", "c": " great movie"}
    rows = predict(None, texts, tiny["llama"], template="{text} it was", verbalizer=verbalizer)
    assert_distributions(rows, texts, ["a", "b", "c"])


def test_braces_in_a_text_are_kept_as_they_are(tiny):
    llama = tiny["llama"]
    task = ClassificationTask(llama, "{text} : {text_b} ?", {"a": " good", "b": " bad"})
    text, text_b = "good {text_b} bad {text}", "{label} great"
    ids, _, _ = task.encode(Example(text, text_b=text_b, where="x"), with_label=False).rows[0]
    written = f"{text} : {text_b} ?"
    expected = llama.tokenizer(written, add_special_tokens=False).input_ids
    assert ids[len(task.specials_before) :] == expected
