"""Batch prediction and generation over files (`predict --input`, `generate --input`,
softprompt.batch_files): rows equal to the one-shot functions, input fields kept, metrics that
match the rows, one-line errors, and no half-written output."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from sklearn.metrics import f1_score

import softprompt
from conftest import write_jsonl
from softprompt.batch_files import generate_file, predict_file, read_inputs
from softprompt.errors import DataError
from softprompt.generation import SamplingOptions, generate_samples
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt, save_prompt
from softprompt.session import predict
from test_cli import assert_one_line_error, invoke

# label words on which the tiny llama's predictions differ from text to text, so that a row
# matched with another row's prediction, or metrics over misordered labels, would show
VERBALIZER = {"negative": " negative", "positive": " positive"}
TEMPLATE = "review: {text} sentiment:"
GREEDY = SamplingOptions(max_new_tokens=3, greedy=True)
RECORDS = [
    {"text": "great movie", "label": "positive", "id": 1},
    {"text": "it was awful and bad , really , it was", "label": "negative", "id": 2},
    {"text": "The battery died in an hour.", "label": "negative", "id": 3, "extra": [1, 2]},
    {"text": "good", "label": "positive", "id": 4},
    {"text": "awful", "label": "positive", "id": 5},
]


@pytest.fixture()
def prompt(tiny, tmp_path):
    """A soft prompt for the tiny llama, with the task in its header (as training writes it)."""
    backbone = tiny["llama"]
    embedding = torch.randn(4, backbone.hidden_size, generator=torch.Generator().manual_seed(0))
    soft = SoftPrompt(
        embedding * 0.1,
        models=[model_record(backbone)],
        task={"template": TEMPLATE, "verbalizer": VERBALIZER},
    )
    return save_prompt(soft, tmp_path / "p.safetensors")


@pytest.fixture()
def sentences(sentiment_dir) -> list[dict]:
    """Twelve labelled reviews of different lengths from the sample data."""
    lines = (sentiment_dir / "test.jsonl").read_text().splitlines()
    return [{**json.loads(line), "n": i} for i, line in enumerate(lines[:12])]


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def stdout_rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def assert_rows_match_predict(rows, texts, prompt, backbone):
    """Each row's label and probabilities are what `predict` gives for its text."""
    expected = predict(prompt, texts, backbone)
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert row["label"] == want["label"]
        assert row["probabilities"].keys() == want["probabilities"].keys()
        for label, p in want["probabilities"].items():
            assert row["probabilities"][label] == pytest.approx(p, abs=1e-5)


@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_jsonl_rows_equal_predict_and_keep_every_field(prompt, tiny, tmp_path, batch_size):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    target = tmp_path / "out.jsonl"
    summary = predict_file(prompt, source, target, model=tiny["llama"], batch_size=batch_size)
    rows = read_rows(target)
    assert [row["input"] for row in rows] == RECORDS  # every field, as it was, in input order
    assert_rows_match_predict(rows, [r["text"] for r in RECORDS], prompt, tiny["llama"])
    assert summary["inputs"] == 5 and summary["output"] == str(target)
    assert len({row["label"] for row in rows}) == 2, "the tiny model should not predict one label"


def test_cli_csv_input_with_its_own_label_column(monkeypatch, capsys, prompt, tiny, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('review,gold,id\ngreat movie,positive,a\n"awful, really",negative,b\n')
    code, out, err = invoke(
        monkeypatch,
        capsys,
        *("predict", prompt, "--input", source, "--text-field", "review"),
        *("--label-field", "gold", "--json"),
    )
    assert code == 0, err
    rows = stdout_rows(out)
    assert [row["input"] for row in rows] == [
        {"review": "great movie", "gold": "positive", "id": "a"},
        {"review": "awful, really", "gold": "negative", "id": "b"},
    ]
    assert_rows_match_predict(rows, ["great movie", "awful, really"], prompt, tiny["llama"])
    summary = json.loads(err.strip().splitlines()[-1])  # rows on stdout: the summary on stderr
    hits = [row["label"] == row["input"]["gold"] for row in rows]
    assert summary["accuracy"] == pytest.approx(sum(hits) / len(hits))


def test_cli_txt_input_is_one_text_per_line(monkeypatch, capsys, prompt, tiny, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("great movie\n\nit was awful , really\nThe battery died.\n")
    code, out, _ = invoke(monkeypatch, capsys, "predict", prompt, "-i", source)
    assert code == 0
    rows = stdout_rows(out)
    texts = ["great movie", "it was awful , really", "The battery died."]
    assert [row["input"] for row in rows] == [{"text": t} for t in texts]
    assert_rows_match_predict(rows, texts, prompt, tiny["llama"])


@pytest.mark.parametrize("fmt", [None, "jsonl", "csv", "txt"])
def test_cli_stdin_input_in_each_format(monkeypatch, capsys, prompt, tiny, fmt):
    texts = ["great movie", "awful , really bad"]
    stdin = {
        None: "".join(json.dumps({"text": t, "k": i}) + "\n" for i, t in enumerate(texts)),
        "csv": 'k,text\n0,great movie\n1,"awful , really bad"\n',
        "txt": "great movie\nawful , really bad\n",
    }
    stdin["jsonl"] = stdin[None]
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin[fmt]))
    arguments = ["--format", fmt] if fmt else []
    code, out, err = invoke(monkeypatch, capsys, "predict", prompt, "-i", "-", *arguments)
    assert code == 0, err
    rows = stdout_rows(out)
    assert [row["input"]["text"] for row in rows] == texts
    if fmt != "txt":
        assert [str(row["input"]["k"]) for row in rows] == ["0", "1"]
    assert_rows_match_predict(rows, texts, prompt, tiny["llama"])
    assert "<stdin>" in err


def test_labelled_input_summary_is_the_accuracy_of_the_rows(
    monkeypatch, capsys, prompt, tiny, tmp_path, sentences
):
    source = write_jsonl(tmp_path / "in.jsonl", sentences)
    target = tmp_path / "out.jsonl"
    arguments = ["predict", prompt, "-i", source, "-o", target, "--batch-size", "4"]
    code, out, err = invoke(monkeypatch, capsys, *arguments, "--json")
    assert code == 0, err
    rows = read_rows(target)
    assert [row["input"] for row in rows] == sentences
    assert_rows_match_predict(rows, [s["text"] for s in sentences], prompt, tiny["llama"])
    gold = [row["input"]["label"] for row in rows]
    predicted = [row["label"] for row in rows]
    assert len(set(predicted)) == 2, "the tiny model should not predict one label"
    accuracy = sum(p == g for p, g in zip(predicted, gold)) / len(rows)
    macro_f1 = f1_score(gold, predicted, labels=list(VERBALIZER), average="macro")
    summary = json.loads(out)  # rows in a file: the summary object on stdout
    assert summary["accuracy"] == pytest.approx(accuracy)
    assert summary["macro_f1"] == pytest.approx(macro_f1)
    assert summary["examples"] == summary["inputs"] == len(sentences)
    # without --json: one human line on stderr, after the progress lines
    code, out, err = invoke(monkeypatch, capsys, *arguments)
    assert code == 0 and out == ""
    assert f"accuracy {accuracy:.4f}, macro-F1 {macro_f1:.4f}" in err.strip().splitlines()[-1]


def test_unlabelled_input_has_no_metrics(prompt, tiny, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "great"}, {"text": "bad"}])
    summary = predict_file(prompt, source, tmp_path / "o.jsonl", model=tiny["llama"])
    assert summary["inputs"] == 2 and "accuracy" not in summary


def test_progress_lines_are_plain_when_stderr_is_not_a_terminal(
    monkeypatch, capsys, prompt, tmp_path, sentences
):
    source = write_jsonl(tmp_path / "in.jsonl", sentences)
    code, _, err = invoke(monkeypatch, capsys, "predict", prompt, "-i", source, "--batch-size", "1")
    assert code == 0
    lines = err.strip().splitlines()
    assert "\x1b" not in err and "\r" not in err
    progress = lines[:-1]
    assert 1 <= len(progress) <= 10  # at most one a tenth
    line = re.compile(r"predict: (\d+)/12 inputs \((\d+)%\), \d+ s")
    assert all(line.fullmatch(text) for text in progress), lines
    counts = [int(line.fullmatch(text)[1]) for text in progress]
    assert counts == sorted(set(counts)) and counts[-1] == 12
    assert progress[-1].startswith("predict: 12/12 inputs (100%), ")


def test_progress_bar_on_a_terminal_leaves_the_rows_on_stdout(
    monkeypatch, capsys, prompt, tmp_path, sentences
):
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100)
    monkeypatch.setattr("softprompt.cli.common.err", terminal)
    source = write_jsonl(tmp_path / "in.jsonl", sentences)
    code, out, _ = invoke(monkeypatch, capsys, "predict", prompt, "-i", source, "--batch-size", "4")
    assert code == 0
    assert [row["input"] for row in stdout_rows(out)] == sentences
    assert "12/12" in screen.getvalue()


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_generate_file_rows_equal_generate_samples(tiny, prompt, tmp_path, batch_size):
    backbone = tiny["llama"]
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    target = tmp_path / "out.jsonl"
    generate_file(
        prompt,
        source,
        target,
        model=backbone,
        options=GREEDY,
        compare=True,
        batch_size=batch_size,
    )
    rows = read_rows(target)
    steer = softprompt.load_artifact(prompt).steering_for(backbone)
    texts = [r["text"] for r in RECORDS]
    expected = generate_samples(backbone, texts, steer, GREEDY, compare=True)
    assert [row["input"] for row in rows] == RECORDS
    assert [row["with_prompt"] for row in rows] == [e["with_prompt"] for e in expected]
    assert [row["without_prompt"] for row in rows] == [e["without_prompt"] for e in expected]
    assert set(rows[0]) == {"input", "with_prompt", "without_prompt"}


def test_cli_generate_from_a_file_without_prompt_and_with_samples(
    monkeypatch, capsys, tiny, tiny_dirs, tmp_path
):
    source = tmp_path / "in.txt"
    source.write_text("great movie\nawful\n")
    code, out, err = invoke(
        monkeypatch,
        capsys,
        *("generate", "-m", tiny_dirs["llama"], "-i", source, "--max-new-tokens", "3"),
        *("--num-samples", "2", "--seed", "7"),
    )
    assert code == 0, err
    rows = stdout_rows(out)
    assert [row["input"] for row in rows] == [{"text": "great movie"}, {"text": "awful"}]
    options = SamplingOptions(max_new_tokens=3, seed=7)
    expected = generate_samples(
        tiny["llama"], ["great movie", "awful"], None, options, num_samples=2
    )
    assert [row["generated"] for row in rows] == [
        [expected[0]["generated"], expected[1]["generated"]],
        [expected[2]["generated"], expected[3]["generated"]],
    ]


def test_text_still_works_and_is_not_mixed_with_input(monkeypatch, capsys, prompt, tmp_path):
    code, out, _ = invoke(monkeypatch, capsys, "predict", prompt, "-t", "great", "--json")
    assert code == 0 and [row["text"] for row in json.loads(out)] == ["great"]
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    for command in ("predict", "generate"):
        code, _, err = invoke(monkeypatch, capsys, command, prompt, "-t", "x", "-i", source)
        assert_one_line_error(code, err, 2, "give either --text or --input FILE, not both")


def write_bad(tmp_path, name: str, content: str):
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "extra", "code", "fragment"),
    [
        ("none.jsonl", None, [], 1, "input file not found: {path}"),
        ("empty.jsonl", "\n\n", [], 1, "input {path} is empty; add examples to it"),
        ("empty.csv", "", [], 1, "input {path} is empty"),
        ("empty.txt", " \n", [], 1, "input {path} is empty"),
        (
            "f.jsonl",
            '{"text": "a"}\n{"sentence": "b", "label": "x"}\n',
            [],
            1,
            "{path}:2: field 'text' not found (available: sentence, label)",
        ),
        ("f.jsonl", '{"text": "a"}\n{"text": "b"}\n{broken\n', [], 1, "{path}:3: not valid JSON"),
        ("f.jsonl", '{"text": "a"}\n[1, 2]\n', [], 1, "{path}:2: expected a JSON object"),
        ("f.csv", "text,id\na,1\nb,2,3\n", [], 1, "{path}:3: expected 2 columns (text, id)"),
        ("f.jsonl", '{"text": "a"}\n', ["--text-field", "body"], 1, "field 'body' not found"),
        (
            "f.jsonl",
            '{"text": "a", "label": "positive"}\n{"text": "b"}\n',
            [],
            1,
            "{path}:2: field 'label' not found",
        ),
        (
            "f.jsonl",
            '{"text": "a", "label": "meh"}\n',
            [],
            1,
            "{path}:1: label 'meh' is not in the verbalizer",
        ),
        ("f.tsv", "a\n", [], 1, "{path}: unsupported file type '.tsv'"),
        ("f.jsonl", '{"text": "a"}\n', ["--format", "xml"], 2, "unknown --format 'xml'"),
        ("f.jsonl", '{"text": "a"}\n', ["-o", "{dir}/no/o.jsonl"], 2, "--output folder"),
        ("f.jsonl", '{"text": "a"}\n', ["-o", "{dir}"], 2, "is a folder"),
    ],
)
def test_input_mistakes_are_one_line_errors(
    monkeypatch, capsys, prompt, tmp_path, name, content, extra, code, fragment
):
    path = tmp_path / name if content is None else write_bad(tmp_path, name, content)
    extra = [e.format(dir=tmp_path) for e in extra]
    for command in ("predict", "generate"):
        if command == "generate" and "label" in fragment:
            continue  # generate reads no labels
        got, _, err = invoke(monkeypatch, capsys, command, prompt, "-i", path, *extra)
        assert_one_line_error(got, err, code, fragment.format(path=path))


@pytest.mark.parametrize(
    ("option", "commands"),
    [
        (["--output", "x.jsonl"], ("predict", "generate")),
        (["--format", "csv"], ("predict", "generate")),
        (["--text-field", "b"], ("predict", "generate")),
        (["--label-field", "gold"], ("predict",)),
    ],
)
def test_file_options_need_input(monkeypatch, capsys, prompt, option, commands):
    for command in commands:
        code, _, err = invoke(monkeypatch, capsys, command, prompt, "-t", "x", *option)
        assert_one_line_error(code, err, 2, f"{option[0]} goes with --input FILE")


def test_no_text_and_no_input(monkeypatch, capsys, prompt):
    code, _, err = invoke(monkeypatch, capsys, "predict", prompt)
    assert_one_line_error(code, err, 2, "give at least one --text to classify (or --input FILE)")


def test_a_bad_record_at_line_3_leaves_no_output_file(monkeypatch, capsys, prompt, tmp_path):
    source = write_bad(tmp_path, "in.jsonl", '{"text": "a"}\n{"text": "b"}\n{"txt": "c"}\n')
    target = tmp_path / "out" / "rows.jsonl"
    target.parent.mkdir()
    for command in ("predict", "generate"):
        code, _, err = invoke(monkeypatch, capsys, command, prompt, "-i", source, "-o", target)
        assert_one_line_error(code, err, 1, f"{source}:3: field 'text' not found")
        assert list(target.parent.iterdir()) == []


def test_a_failure_midway_leaves_no_half_file_and_keeps_the_old_one(
    monkeypatch, tiny, prompt, tmp_path
):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    target = tmp_path / "out" / "rows.jsonl"
    target.parent.mkdir()
    calls = []
    real = generate_samples

    def fail_on_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise DataError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr("softprompt.session.generate_samples", fail_on_the_third_batch)
    with pytest.raises(DataError, match="disk on fire"):
        generate_file(prompt, source, target, model=tiny["llama"], options=GREEDY, batch_size=2)
    assert len(calls) == 3  # two batches were written before the failure
    assert list(target.parent.iterdir()) == []
    target.write_text("old rows\n")
    calls.clear()
    with pytest.raises(DataError, match="disk on fire"):
        generate_file(prompt, source, target, model=tiny["llama"], options=GREEDY, batch_size=2)
    assert target.read_text() == "old rows\n"
    assert list(target.parent.iterdir()) == [target]


def test_read_inputs_reads_labels_only_when_the_first_record_has_them(tmp_path):
    labelled = read_inputs(write_jsonl(tmp_path / "a.jsonl", RECORDS[:2]), label_field="label")
    assert labelled.labelled and [e.label for e in labelled.examples] == ["positive", "negative"]
    assert labelled.examples[1].where == f"{tmp_path / 'a.jsonl'}:2"
    plain = read_inputs(write_jsonl(tmp_path / "b.jsonl", [{"text": "a"}]), label_field="label")
    assert not plain.labelled and plain.examples[0].label is None
    with pytest.raises(DataError, match="field 'gold' not found"):
        read_inputs(tmp_path / "b.jsonl", label_field="gold", require_label=True)


def test_the_batch_functions_are_public():
    assert softprompt.predict_file is predict_file
    assert softprompt.generate_file is generate_file
    assert {"predict_file", "generate_file", "read_inputs"} <= set(softprompt.__all__)


def test_a_reader_that_stops_early_ends_the_run_quietly(prompt, tmp_path, sentences):
    """`predict -i FILE | head -1` in a real process: exit 1, no traceback, plain stderr."""
    source = write_jsonl(
        tmp_path / "in.jsonl", sentences * 40
    )  # rows beyond a pipe buffer (64 KiB)
    env = {**os.environ, "PYTHONPATH": str(Path(softprompt.__file__).parents[1])}
    command = [sys.executable, "-m", "softprompt.cli", "predict", str(prompt), "-i", str(source)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    ) as process:
        first = json.loads(process.stdout.readline())
        process.stdout.close()
        err = process.stderr.read()
        code = process.wait(timeout=120)
    assert first["input"] == sentences[0]
    assert code == 1, err
    assert "Traceback" not in err and "\x1b" not in err
    progress = re.compile(r"predict: \d+/480 inputs \(\d+%\), \d+ s")
    assert all(progress.fullmatch(line) for line in err.splitlines()), err


def test_the_batch_functions_default_to_the_prompts_own_model(prompt, tiny, tmp_path):
    # no model given: the prompt's recorded model (the tiny llama's folder), not DEFAULT_MODEL
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    summary = predict_file(prompt, source, tmp_path / "p.jsonl")
    assert summary["model"] == tiny["llama"].name
    texts = [r["text"] for r in RECORDS]
    assert_rows_match_predict(read_rows(tmp_path / "p.jsonl"), texts, prompt, tiny["llama"])
    summary = generate_file(prompt, source, tmp_path / "g.jsonl", options=GREEDY)
    assert summary["model"] == tiny["llama"].name
    steer = softprompt.load_artifact(prompt).steering_for(tiny["llama"])
    expected = generate_samples(tiny["llama"], texts, steer, GREEDY)
    assert [row["with_prompt"] for row in read_rows(tmp_path / "g.jsonl")] == [
        e["with_prompt"] for e in expected
    ]
