"""A run's files whole after any kill: summary.json atomic, metrics lines appended whole (a
torn last line left out), a study's finished run is one with a complete summary."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from crash.conftest import train_config
from softprompt.errors import OutputError
from softprompt.files import (
    FAULT_VARIABLE,
    append_line,
    read_json_lines,
)
from softprompt.training.run_dir import RunDir, RunLog, read_summary


def test_a_failed_summary_write_leaves_the_old_summary_whole(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.write_summary({"steps": 1})
    monkeypatch.setenv(FAULT_VARIABLE, "ENOSPC@1")  # the write fails once the content is out
    with pytest.raises(OutputError, match="no space left"):
        run.write_summary({"steps": 2, "padding": "x" * 10_000})
    assert read_summary(tmp_path) == {"steps": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_torn_summary_is_not_a_finished_run(tmp_path):
    (tmp_path / "summary.json").write_text('{"steps": 4, "best_d')
    assert read_summary(tmp_path) is None
    from softprompt.study.runs import is_done

    assert not is_done(tmp_path)


def test_each_metrics_line_reaches_the_file_in_one_write(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    writes = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append(data) or real_write(fd, data))
    with RunLog(run, [], {}) as log:
        log.train({"event": "train", "step": 1, "loss": 0.5, "lr": 0.1})
        # nothing buffered: the line is in the file before any flush or close
        assert read_json_lines(tmp_path / "metrics.jsonl")[0]["step"] == 1
        log.eval(1, {"mean": {"accuracy": 0.5}})
    assert [w.count(b"\n") for w in writes] == [1, 1]
    assert all(w.endswith(b"\n") for w in writes)


def test_a_torn_last_line_is_left_out_and_resume_rewrites_the_rest(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_json_lines(path) == [{"step": 1}, {"step": 2}]
    handle = os.open(path, os.O_WRONLY | os.O_APPEND)
    append_line(handle, {"step": 9}, path)
    os.close(handle)
    # the torn line and the line after it are one unreadable line, left out
    assert read_json_lines(path) == [{"step": 1}, {"step": 2}]
    RunDir(tmp_path).prepare(train_config(steps=2), 2, True, tmp_path / "x")
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_the_study_resumes_a_run_with_a_torn_summary(tiny_dirs, tmp_path):
    from softprompt.study import load_study, run_study

    base = train_config(steps=2).model_dump(mode="json")
    base["models"] = [str(tiny_dirs["llama"])]
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    grid = {"config": "base.yaml", "model_sets": [[str(tiny_dirs["llama"])]], "train_seeds": [1]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(grid))
    first = run_study(load_study(tmp_path / "study.yaml"), tmp_path / "out", progress=False)
    [summary] = (tmp_path / "out").rglob("summary.json")
    whole = summary.read_text()
    summary.write_text(whole[: len(whole) // 2])  # as an in-place write killed midway left it
    again = run_study(load_study(tmp_path / "study.yaml"), tmp_path / "out", progress=False)
    assert json.loads(summary.read_text())["steps"] == 2
    assert again["runs"][0]["score"] == first["runs"][0]["score"]
    assert again["runs"][0]["skipped"] is False
