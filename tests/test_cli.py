"""The command line: JSON outputs, and one-line errors with the right exit code, no traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_jsonl
from softprompt import cli


def invoke(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["softprompt", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_config(tmp_path, model_dir, data, **task):
    config = {
        "models": [str(model_dir)],
        "task": {
            "data": str(data),
            "template": "review: {text} sentiment:",
            "verbalizer": {"negative": " bad", "positive": " good"},
            "max_examples": 16,
            **task,
        },
        "prompt": {"length": 4},
        "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def assert_one_line_error(code, err, expected_code, fragment):
    assert code == expected_code, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:")
    assert fragment in lines[0]
    assert "Traceback" not in err


def test_train_then_evaluate_predict_and_generate(
    monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir
):
    config = write_config(tmp_path, tiny_dirs["llama"], sentiment_dir)
    code, out, _ = invoke(
        monkeypatch,
        capsys,
        "train",
        config,
        "--out",
        tmp_path / "run",
        "--json",
        "--quiet",
        "--set",
        "train.steps=2",
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["steps"] == 2
    assert "accuracy" in summary["dev"]["mean"] and summary["train_samples_per_second"] > 0
    prompt = tmp_path / "run" / "prompt.safetensors"

    code, out, _ = invoke(
        monkeypatch, capsys, "evaluate", prompt, "--data", sentiment_dir, "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["examples"] == 100 and result["trained_on_model"] is True
    assert 0.0 <= result["accuracy"] <= 1.0

    code, out, _ = invoke(
        monkeypatch,
        capsys,
        "evaluate",
        "--model",
        tiny_dirs["llama"],
        "--data",
        sentiment_dir,
        "--config",
        config,
        "--split",
        "dev",
        "--json",
    )
    assert code == 0 and json.loads(out)["prompt"] is None

    code, out, _ = invoke(
        monkeypatch, capsys, "predict", prompt, "-t", "great movie", "-t", "awful", "--json"
    )
    rows = json.loads(out)
    assert code == 0 and [r["text"] for r in rows] == ["great movie", "awful"]
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)

    code, out, _ = invoke(
        monkeypatch,
        capsys,
        "generate",
        prompt,
        "-t",
        "great movie",
        "--compare",
        "--greedy",
        "--max-new-tokens",
        "3",
        "--json",
    )
    assert code == 0
    row = json.loads(out)[0]
    assert set(row) == {"text", "with_prompt", "without_prompt"}


def test_evaluate_takes_validation_as_the_dev_split(
    monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir
):
    config = write_config(tmp_path, tiny_dirs["llama"], sentiment_dir)
    results = {}
    for split in ("validation", "dev"):
        args = ["--model", tiny_dirs["llama"], "--data", sentiment_dir, "--config", config]
        code, out, err = invoke(monkeypatch, capsys, "evaluate", *args, "--split", split, "--json")
        assert code == 0, err
        results[split] = json.loads(out)
    assert results["validation"]["split"] == "dev"
    assert results["validation"] == results["dev"]


def test_evaluate_without_a_verbalizer_suggests_the_options(
    monkeypatch, capsys, tiny_dirs, sentiment_dir
):
    code, _, err = invoke(
        monkeypatch, capsys, "evaluate", "--model", tiny_dirs["llama"], "--data", sentiment_dir
    )
    assert_one_line_error(code, err, 2, "the classification task needs a verbalizer")
    assert "--verbalizer '{" in err and "--config CONFIG" in err


def test_models_lists_the_bundled_aliases(monkeypatch, capsys):
    code, out, _ = invoke(monkeypatch, capsys, "models", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["alias"] for r in rows] == ["smollm2-135m", "gemma3-270m"]
    assert rows[0]["default"] is True


def test_missing_config_file(monkeypatch, capsys, tmp_path):
    code, _, err = invoke(monkeypatch, capsys, "train", tmp_path / "nope.yaml")
    assert_one_line_error(code, err, 2, "config file not found")


def test_config_key_typo(monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir):
    config = write_config(tmp_path, tiny_dirs["llama"], sentiment_dir)
    code, _, err = invoke(monkeypatch, capsys, "train", config, "--set", "train.stepz=3")
    assert_one_line_error(code, err, 2, "did you mean 'train.steps'")


def test_a_set_error_is_blamed_on_the_set(monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir):
    config = write_config(tmp_path, tiny_dirs["llama"], sentiment_dir)
    code, _, err = invoke(monkeypatch, capsys, "train", config, "--set", "train.lr=-1")
    assert_one_line_error(code, err, 2, "error: --set train.lr=-1: train.lr: Input should be")
    assert str(config) not in err


def test_resume_takes_the_runs_own_config_and_refuses_a_changed_one(
    monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir
):
    config = write_config(tmp_path, tiny_dirs["llama"], sentiment_dir)
    run_dir = tmp_path / "run"
    assert invoke(monkeypatch, capsys, "train", config, "--out", run_dir, "--quiet")[0] == 0
    config.write_text(config.read_text().replace("steps: 4", "steps: 6"))
    code, _, err = invoke(monkeypatch, capsys, "train", config, "--resume", run_dir)
    assert_one_line_error(code, err, 2, "train.steps is 6 here but 4 in the run; resume without")
    assert "--allow-changes" in err
    code, out, err = invoke(monkeypatch, capsys, "train", "--resume", run_dir, "--quiet", "--json")
    assert code == 0 and json.loads(out)["steps"] == 4, err
    code, out, err = invoke(
        monkeypatch, capsys, "train", "--resume", run_dir, "--set", "train.steps=6",
        "--allow-changes", "--quiet", "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["steps"] == 6, err
    assert "train.steps 4 -> 6" in err and "config-changes.jsonl" in err


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--resume", "{tmp}/nope"], "cannot resume {tmp}/nope: no such folder"),
        (["--resume", "{tmp}"], "cannot resume {tmp}: it has no config.yaml"),
        (["c.yaml", "--allow-changes"], "--allow-changes goes with --resume DIR"),
    ],
)
def test_resume_usage_errors(monkeypatch, capsys, tmp_path, arguments, fragment):
    arguments = [a.format(tmp=tmp_path) for a in arguments]
    code, _, err = invoke(monkeypatch, capsys, "train", *arguments)
    assert_one_line_error(code, err, 2, fragment.format(tmp=tmp_path))
    assert not (tmp_path / "nope").exists()


HOLD_THE_LOCK = """
import sys
from softprompt.training.run_dir import RunDir
with RunDir(sys.argv[1]).lock():
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_run_folder_locked_by_another_process_is_refused_at_once(
    monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir
):
    import select
    import signal

    config = write_config(tmp_path, tiny_dirs["llama"], sentiment_dir)
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 120)
        assert ready and holder.stdout.readline() == "locked\n"
        code, _, err = invoke(monkeypatch, capsys, "train", config, "--out", run_dir, "--quiet")
        assert_one_line_error(
            code, err, 2, f"{run_dir} is being trained by another process (pid {holder.pid}); wait"
        )
        assert "choose another --out" in err
        assert sorted(p.name for p in run_dir.iterdir()) == ["train.lock"]  # nothing written
        holder.send_signal(signal.SIGKILL)  # a crash: the OS drops the lock with the process
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    code, _, err = invoke(monkeypatch, capsys, "train", config, "--out", run_dir, "--quiet")
    assert code == 0, err
    assert (run_dir / "summary.json").is_file()


def test_malformed_jsonl_line(monkeypatch, capsys, tmp_path, tiny_dirs):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", [{"text": "a", "label": "positive"}])
    with (data / "train.jsonl").open("a") as handle:
        handle.write("{broken\n")
    write_jsonl(data / "dev.jsonl", [{"text": "a", "label": "positive"}])
    config = write_config(tmp_path, tiny_dirs["llama"], data)
    code, _, err = invoke(monkeypatch, capsys, "train", config)
    assert_one_line_error(code, err, 1, "train.jsonl:2: not valid JSON")


def test_label_missing_from_the_verbalizer(monkeypatch, capsys, tmp_path, tiny_dirs):
    data = tmp_path / "data"
    write_jsonl(
        data / "train.jsonl", [{"text": "a", "label": "positive"}, {"text": "b", "label": "meh"}]
    )
    write_jsonl(data / "dev.jsonl", [{"text": "a", "label": "positive"}])
    config = write_config(tmp_path, tiny_dirs["llama"], data)
    code, _, err = invoke(monkeypatch, capsys, "train", config)
    assert_one_line_error(code, err, 1, "train.jsonl:2: label 'meh' is not in the verbalizer")


def test_template_without_text(monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir):
    config = write_config(tmp_path, tiny_dirs["llama"], sentiment_dir, template="Sentiment:")
    code, _, err = invoke(monkeypatch, capsys, "train", config)
    assert_one_line_error(code, err, 2, "no {text} placeholder")


def test_empty_data_set(monkeypatch, capsys, tmp_path, tiny_dirs):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("")
    (data / "dev.jsonl").write_text("")
    config = write_config(tmp_path, tiny_dirs["llama"], data)
    code, _, err = invoke(monkeypatch, capsys, "train", config, "--out", tmp_path / "run")
    assert_one_line_error(code, err, 1, "is empty")
    assert not (tmp_path / "run").exists()


def test_unknown_model_alias(monkeypatch, capsys, sentiment_dir):
    code, _, err = invoke(
        monkeypatch,
        capsys,
        "evaluate",
        "--model",
        "smollm-135m",
        "--data",
        sentiment_dir,
        "--template",
        "{text}",
        "--verbalizer",
        '{"a": " yes"}',
    )
    assert_one_line_error(code, err, 1, "unknown model alias 'smollm-135m'")


def test_missing_prompt_file(monkeypatch, capsys, tmp_path):
    code, _, err = invoke(monkeypatch, capsys, "predict", tmp_path / "p.safetensors", "-t", "x")
    assert_one_line_error(code, err, 1, "prompt file not found")


def test_bad_verbalizer_json(monkeypatch, capsys, tiny_dirs, sentiment_dir):
    code, _, err = invoke(
        monkeypatch,
        capsys,
        "evaluate",
        "--model",
        tiny_dirs["llama"],
        "--data",
        sentiment_dir,
        "--verbalizer",
        "{nope",
    )
    assert_one_line_error(code, err, 2, "--verbalizer is not valid JSON")


def test_debug_shows_the_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("SOFTPROMPT_DEBUG", raising=False)
    monkeypatch.setattr("sys.argv", ["softprompt", "--debug", "train", str(tmp_path / "nope.yaml")])
    with pytest.raises(Exception, match="config file not found"):
        cli.main()
    # the flag lives for one invocation only: the next one prints the one-line error again
    code, _, err = invoke(monkeypatch, capsys, "train", tmp_path / "nope.yaml")
    assert_one_line_error(code, err, 2, "config file not found")
    assert "SOFTPROMPT_DEBUG" not in __import__("os").environ


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "-t", "x"],
        ["explain", "p.safetensors"],
        ["compress", "p.safetensors", "--keep", "2", "--out", "q.safetensors"],
        ["transfer-matrix", "p.safetensors"],
    ],
)
def test_unknown_device_is_a_one_line_error(monkeypatch, capsys, tiny_dirs, command):
    arguments = [*command, "-m", tiny_dirs["llama"], "--device", "gpu0"]
    code, _, err = invoke(monkeypatch, capsys, *arguments)
    assert code == 2
    assert err.strip() == "error: --device: unknown device 'gpu0'"


def test_misspelt_command_names_the_closest(monkeypatch, capsys):
    code, _, err = invoke(monkeypatch, capsys, "trian", "x.yaml")
    assert_one_line_error(code, err, 2, "unknown command 'trian' (did you mean 'train'?)")
    assert "softprompt --help" in err


def test_misspelt_option_names_the_closest(monkeypatch, capsys, tmp_path):
    code, _, err = invoke(monkeypatch, capsys, "train", tmp_path / "c.yaml", "--qiet")
    assert_one_line_error(code, err, 2, "unknown option '--qiet' (did you mean '--quiet'?)")
    assert "softprompt train --help" in err
    code, _, err = invoke(monkeypatch, capsys, "--debgu", "models")
    assert_one_line_error(code, err, 2, "did you mean '--debug'?")


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["train"], "missing argument"),
        (["tiny-family", "d", "--count", "x"], "invalid value for '--count'"),
        (["train", "c.yaml", "--out"], "option '--out' requires an argument"),
        (["compare", "a", "b", "--bogus"], "unknown option '--bogus'; see"),
    ],
)
def test_other_usage_errors_are_one_line(monkeypatch, capsys, arguments, fragment):
    code, _, err = invoke(monkeypatch, capsys, *arguments)
    assert_one_line_error(code, err, 2, fragment)


def test_version(monkeypatch, capsys):
    import softprompt

    code, out, err = invoke(monkeypatch, capsys, "--version")
    assert code == 0 and err == ""
    assert out == f"softprompt {softprompt.__version__}\n"


def test_bare_softprompt_prints_the_help(monkeypatch, capsys):
    code, out, err = invoke(monkeypatch, capsys)
    assert code == 2
    assert "Usage" in out + err and "transfer-matrix" in out + err
    assert "Traceback" not in out + err


def imported_after(module: str, watched: set[str]) -> list[str]:
    """Which of `watched` a fresh interpreter has imported after importing `module`."""
    import softprompt

    source = str(Path(softprompt.__file__).parents[1])
    check = f"import json, sys, {module}; print(json.dumps(sorted({watched!r} & set(sys.modules))))"
    done = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": source},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_importing_the_cli_leaves_torch_out():
    assert imported_after("softprompt.cli", {"torch", "transformers"}) == []


def test_the_server_and_generation_do_not_import_sklearn():
    # its import costs ~2 s of every server start; only evaluation's macro-F1 needs it
    assert imported_after("softprompt.serving.app", {"sklearn"}) == []
    assert imported_after("softprompt.generation", {"sklearn"}) == []


def test_the_public_api_resolves_lazily():
    import softprompt

    assert set(softprompt._EXPORTS) == set(softprompt.__all__)
    assert set(softprompt.__all__) <= set(dir(softprompt))
    for name in softprompt.__all__:
        assert getattr(softprompt, name).__name__ == name
    from softprompt import generate_samples, train

    assert train.__module__ == "softprompt.training.trainer"
    assert generate_samples.__module__ == "softprompt.generation"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        softprompt.trian  # noqa: B018


def test_brackets_in_a_message_are_printed_as_they_are(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "[run]" / "p.safetensors"
    code, _, err = invoke(monkeypatch, capsys, "predict", missing, "-t", "x")
    assert_one_line_error(code, err, 1, "[run]")
