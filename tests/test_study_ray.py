"""Study grids on Ray (issue #25): the same run folders and metrics as the sequential path,
a killed worker's run retried from its checkpoint, a stopped study started again, the
command line's refusals, and Ray kept optional and on loopback addresses."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT, corpus
from softprompt.models.tiny import save_tiny
from softprompt.study import RaySettings, load_study, run_study
from softprompt.study.grid import LOOPBACK_ONLY
from test_cli import invoke

SOFTPROMPT = Path(sys.executable).parent / "softprompt"  # the command as installed


@pytest.fixture(scope="module")
def runtime():
    """One local Ray runtime for the module, started as `softprompt study --ray` starts it."""
    os.environ.setdefault(LOOPBACK_ONLY, "0")  # before Ray (an extra make setup installs) loads
    import ray

    from softprompt.study.cluster import _connect

    assert _connect(RaySettings()) is True
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("ray-family")
    texts = corpus()
    return [str(save_tiny(root / f"seed-{s}", texts, "llama", seed=s)) for s in range(2)]


def write_study(folder: Path, models: list[str], model_sets, **train) -> Path:
    """A study file over the sample sentiment task and tiny models (model_sets: index lists)."""
    base = {
        "models": models[:1],
        "task": {
            "data": str(ROOT / "examples/data/sentiment"),
            "template": "review: {text} sentiment:",
            "verbalizer": {"negative": " bad", "positive": " good"},
            "max_examples": 16,
        },
        "prompt": {"length": 4, "init": "random", "seed": 1},
        "train": {"steps": 4, "batch_size": 4, "lr": 0.1, "eval_every": 2, **train},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    grid = {
        "config": "base.yaml",
        "model_sets": [[models[i] for i in indices] for indices in model_sets],
        "train_seeds": [1, 2],
    }
    (folder / "study.yaml").write_text(yaml.safe_dump(grid))
    return folder / "study.yaml"


def on_ray(study_file: Path, **settings):
    study = load_study(study_file)
    study.ray = RaySettings(**settings)
    return study


def run_here(study_file: Path, out: Path) -> dict:
    """The sequential study with one torch thread, as each Ray run has with one CPU: float32
    sums reduced over another number of threads differ in their last bits (2e-7 seen)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_study(load_study(study_file), out, progress=False)
    finally:
        torch.set_num_threads(threads)


def same_runs(a: Path, b: Path, names: list[str]) -> None:
    """Run for run: the same dev metrics and bitwise the same last prompt."""
    for name in names:
        first = json.loads((a / name / "summary.json").read_text())
        second = json.loads((b / name / "summary.json").read_text())
        for key in ("steps", "best_step", "best_value", "best_dev", "dev"):
            assert first[key] == second[key], (name, key)
        left = load_file(a / name / "last.safetensors")
        right = load_file(b / name / "last.safetensors")
        assert left.keys() == right.keys()
        assert all(torch.equal(left[k], right[k]) for k in left), name


def test_a_2x2_grid_on_ray_matches_the_sequential_run_bitwise(runtime, models, tmp_path, capsys):
    study_file = write_study(tmp_path, models, [[0], [0, 1]])
    here = run_here(study_file, tmp_path / "here")
    there = run_study(on_ray(study_file), tmp_path / "there", progress=True)
    names = [r["run"] for r in here["runs"]]
    assert len(names) == 4 and [r["run"] for r in there["runs"]] == names
    same_runs(tmp_path / "here", tmp_path / "there", names)
    assert there["groups"] == here["groups"]
    assert there.keys() == here.keys()
    assert (tmp_path / "there" / "study.csv").read_text() == (
        tmp_path / "here" / "study.csv"
    ).read_text()
    lines = [t for t in capsys.readouterr().err.splitlines() if t.startswith("run ")]
    assert [t.split()[1] for t in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert sorted(t.split()[2].rstrip(":") for t in lines) == sorted(names)
    assert all("dev accuracy" in t and "left" in t for t in lines[:3])
    assert "left" not in lines[3]


def kill_at_first_checkpoint(run_dir: Path, seen: dict) -> None:
    """kill -9 the process training `run_dir` (its train.lock names it) once it has
    written its first checkpoint and before it is done."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any((run_dir / "checkpoints").glob("step-*.safetensors")):
            pid = int((run_dir / "train.lock").read_text().split()[0])
            seen["done_before"] = (run_dir / "summary.json").exists()
            seen["pid"] = pid
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.005)


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(runtime, models, tmp_path):
    study_file = write_study(tmp_path, models, [[0]], steps=60, checkpoint_every=3)
    target = tmp_path / "there" / "set0-1models" / "train2-init0"
    seen: dict = {}
    killer = threading.Thread(target=kill_at_first_checkpoint, args=(target, seen))
    killer.start()
    there = run_study(on_ray(study_file), tmp_path / "there", progress=False)
    killer.join()
    assert seen.get("pid") not in (None, os.getpid()) and seen["done_before"] is False, seen
    assert not psutil.pid_exists(seen["pid"])

    here = run_here(study_file, tmp_path / "here")
    names = [r["run"] for r in here["runs"]]
    assert [r["run"] for r in there["runs"]] == names  # each run once
    same_runs(tmp_path / "here", tmp_path / "there", names)
    assert there["groups"] == here["groups"]
    summary = json.loads((target / "summary.json").read_text())
    assert summary["resumed_from"] is not None  # the retry started from the checkpoint
    steps = [
        json.loads(line)["step"]
        for line in (target / "metrics.jsonl").read_text().splitlines()
        if json.loads(line).get("event") == "train"
    ]
    assert steps == list(range(1, 61))  # nothing lost, nothing counted twice


def test_the_local_runtime_listens_on_loopback_addresses_only(runtime):
    listening = [
        conn.laddr.ip
        for child in psutil.Process().children(recursive=True)
        for conn in child.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening, "the runtime's processes listen somewhere"
    assert {ip.removeprefix("::ffff:") for ip in listening} == {"127.0.0.1"}, listening


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [str(SOFTPROMPT), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_a_cluster_address_without_storage_is_refused_in_one_line(
    models, tmp_path, monkeypatch, capsys
):
    study_file = write_study(tmp_path, models, [[0]])
    args = ("study", study_file, "--ray", "10.1.2.3:6379", "--out", tmp_path / "s")
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "--storage DIR" in err, err
    assert not (tmp_path / "s").exists()


def test_ray_options_without_ray_are_refused(models, tmp_path, monkeypatch, capsys):
    study_file = write_study(tmp_path, models, [[0]])
    out = ("--out", tmp_path / "s")
    code, _, err = invoke(monkeypatch, capsys, "study", study_file, "--cpus-per-run", "2", *out)
    assert code == 2 and "--cpus-per-run goes with --ray" in err, err
    code, _, err = invoke(monkeypatch, capsys, "study", study_file, "10.1.2.3:6379", *out)
    assert code == 2 and "ADDRESS goes with --ray" in err, err
    args = ("study", study_file, "--ray", "--cpus-per-run", "0", *out)
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert code == 2 and "--cpus-per-run: Input should be greater than 0" in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_without_ray_installed_study_runs_here_and_ray_asks_for_the_extra(
    models, tmp_path, monkeypatch
):
    """`sys.modules["ray"] = None` is how Python sees a package that is not installed."""
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "softprompt.study.cluster", raising=False)
    study_file = write_study(tmp_path, models, [[0]])
    result = run_study(load_study(study_file), tmp_path / "here", progress=False)
    assert len(result["runs"]) == 2
    from softprompt.errors import UsageError

    with pytest.raises(UsageError, match=r"pip install -e '\.\[ray\]'"):
        run_study(on_ray(study_file), tmp_path / "there", progress=False)


def test_only_the_cluster_module_imports_ray():
    importers = set()
    for path in (ROOT / "src/softprompt").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(name == "ray" or name.startswith("ray.") for name in names):
                importers.add(path.relative_to(ROOT / "src").as_posix())
    assert importers == {"softprompt/study/cluster.py"}


@pytest.mark.slow
def test_a_study_stopped_whole_runs_only_the_unfinished_runs_again(models, tmp_path):
    """SIGTERM to `softprompt study --ray` while runs go on: exit 130, finished runs kept;
    started again, it trains only the runs that were not done and ends with all four."""
    study_file = write_study(tmp_path, models, [[0], [0, 1]], steps=200, checkpoint_every=5)
    out = tmp_path / "there"
    args = [str(SOFTPROMPT), "study", str(study_file), "--ray", "--out"]
    process = subprocess.Popen(
        [*args, str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(out.glob("*/*/checkpoints/step-*")):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "SIGTERM received" in err and "run the same command again" in err, err
    finished = {p.parent.relative_to(out).as_posix() for p in out.glob("*/*/summary.json")}
    assert len(finished) < 4
    mtimes = {name: (out / name / "summary.json").stat().st_mtime_ns for name in finished}

    again = cli("study", study_file, "--ray", "--out", out, "--quiet", "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert len(result["runs"]) == 4
    assert {r["run"] for r in result["runs"] if r["skipped"]} == finished
    assert {n: (out / n / "summary.json").stat().st_mtime_ns for n in finished} == mtimes
    resumed = [
        json.loads((out / r["run"] / "summary.json").read_text())["resumed_from"]
        for r in result["runs"]
        if not r["skipped"]
    ]
    assert any(resumed)  # a stopped run went on from its checkpoint
