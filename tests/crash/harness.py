"""The crash harness: run a softprompt command, SIGKILL it at a seeded random moment, check
every file it writes, then re-run (or `--resume`) it and check the result equals a run that
was never killed.

Cost: a fresh Python that imports torch takes seconds here, so one *fork server* (`serve`,
started once per test module by `ForkServer`) imports softprompt's CLI and its heavy modules
once and `os.fork()`s a child per trial that calls `softprompt.cli.main()` in-process; killing
that child is cheap. The server runs with one torch thread (forking after OpenMP started
threads is unsafe, and one thread keeps float sums in one order).

A kill moment is either a write step (`kill@N`: the child SIGKILLs itself at its Nth
`files.fault_point`: content written, fsynced, renamed, a metrics line appended), or a time
(the child is killed that many seconds after its fork, spread over an uninterrupted run's
whole wall time, model loading included). Trials come in *chains*: kill, check, re-run and
kill again, ..., until a re-run finishes; then its results are compared with the reference.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SRC = Path(__file__).resolve().parents[2] / "src"
TEMPORARY_SUFFIX = ".tmp"
PRELOADED = (
    "softprompt.cli",
    "softprompt.analysis.explain",
    "softprompt.analysis.report",
    "softprompt.batch_files",
    "softprompt.interop.peft",
    "softprompt.study.runner",
    "softprompt.training.trainer",
    "matplotlib.pyplot",
    "sklearn.metrics",
)


# --- the fork server (runs in its own process) ---------------------------------------------


def serve() -> None:
    """Read one JSON trial a line from stdin, run it in a forked child, answer one JSON line:
    {"killed", "code", "seconds", "steps"} (steps: the child's write steps, when it ended)."""
    import importlib

    import matplotlib
    import torch

    torch.set_num_threads(1)
    matplotlib.use("Agg")
    for name in PRELOADED:  # the heavy imports, once, before any fork
        importlib.import_module(name)

    answers = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the protocol's pipe
    for line in sys.stdin:
        trial = json.loads(line)
        answers.write(json.dumps(_trial(trial)) + "\n")
        answers.flush()


def _trial(trial: dict) -> dict:
    reader, writer = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        _child(trial, writer)
    os.close(writer)
    killed_by_us = _wait_or_kill(pid, trial.get("kill_after"))
    _, status = os.waitpid(pid, 0)
    seconds = time.monotonic() - started
    with os.fdopen(reader, "rb") as handle:
        steps = handle.read().decode() or None
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    return {
        "killed": killed,
        "by_time": killed and killed_by_us,
        "code": code,
        "seconds": seconds,
        "steps": int(steps) if steps else None,
    }


def _wait_or_kill(pid: int, kill_after: float | None) -> bool:
    """Wait for the child; SIGKILL it `kill_after` seconds after its fork if it still runs."""
    if kill_after is None:
        return False
    handle = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([handle], [], [], kill_after)
        if ready:
            return False
        os.kill(pid, signal.SIGKILL)  # the child is not reaped yet: its pid is still its own
        return True
    finally:
        os.close(handle)


def _child(trial: dict, writer: int) -> None:
    """In the forked child: the CLI with the trial's argv, cwd and fault plan; never returns."""
    code = 99
    try:
        import softprompt.files as files
        from softprompt import cli

        log = os.open(trial["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = sys.stderr = open(log, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.chdir(trial["cwd"])
        os.environ.pop(files.FAULT_VARIABLE, None)
        if trial.get("fault"):
            os.environ[files.FAULT_VARIABLE] = trial["fault"]
        files._faults.update(plan=None, count=0)
        sys.argv = ["softprompt", *trial["argv"]]
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        os.write(writer, str(files._faults["count"]).encode())
    except BaseException:  # a bug in the command: its traceback goes to the log
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


class ForkServer:
    """The test side of `serve`: `run(argv, cwd, ...)` runs one trial and returns its answer."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
        env.pop("SOFTPROMPT_FAULT", None)
        self.process = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def run(
        self,
        argv: list,
        cwd: Path,
        fault: str | None = None,
        kill_after: float | None = None,
        log: Path | None = None,
    ) -> dict:
        trial = {
            "argv": [str(a) for a in argv],
            "cwd": str(cwd),
            "fault": fault,
            "kill_after": kill_after,
            "log": str(log or Path(cwd) / "child.log"),
        }
        self.process.stdin.write(json.dumps(trial) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError("the fork server died")
        return json.loads(answer)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


# --- checking what a killed command left ---------------------------------------------------


def check_whole(root: Path, appended: tuple[str, ...] = ("metrics.jsonl",)) -> int:
    """Every file under `root` parses whole; returns how many files were checked. Hidden
    names must be temporary ones (`.NAME.<hex>.tmp` files, `.NAME-<hex>` folders), which no
    reader opens. In `appended` files (JSON lines appended one write each) a torn last line is
    allowed; every other line must parse."""
    checked = 0
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            hidden = next(part for part in relative.parts if part.startswith("."))
            assert hidden.endswith(TEMPORARY_SUFFIX) or "-" in hidden, f"odd hidden {path}"
            continue
        if path.is_file():
            _check_file(path, torn_tail_allowed=path.name in appended)
            checked += 1
    return checked


def _check_file(path: Path, torn_tail_allowed: bool) -> None:
    data = path.read_bytes()
    suffix = path.suffix
    if suffix == ".json":
        json.loads(data)
    elif suffix == ".jsonl":
        lines = data.decode().split("\n")
        tail = lines.pop()  # "" when the file ends with its newline
        assert tail == "" or torn_tail_allowed, f"{path}: a torn last line"
        for line in lines:
            json.loads(line)
    elif suffix == ".safetensors":
        from safetensors.torch import load

        load(data)
    elif suffix == ".yaml":
        yaml.safe_load(data)
    elif suffix == ".csv":
        assert data.endswith(b"\n"), f"{path}: cut short"
        rows = list(csv.reader(io.StringIO(data.decode())))
        assert len({len(row) for row in rows}) == 1, f"{path}: rows of different lengths"
    elif suffix == ".png":
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), path
    elif suffix == ".html":
        assert data.rstrip().endswith(b"</html>"), f"{path}: cut short"


def json_lines(path: Path) -> list[dict]:
    """The whole lines of a JSON-lines file (a torn last line left out)."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines]


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    left, right = load_file(a), load_file(b)
    return left.keys() == right.keys() and all(left[k].equal(right[k]) for k in left)


# --- commands, chains and the tally ---------------------------------------------------------


@dataclass
class Command:
    """One command under test. `setup(work)` writes its inputs (and any previous version of
    its outputs) into a fresh folder; `argv(work, again)` is the command (`again`: the re-run
    after a kill); `partial(work, reference)` checks what a killed run left (every file whole,
    each output absent, as before or as the reference); `final(work, reference)` checks a
    finished run against the reference."""

    name: str
    setup: Callable[[Path], None]
    argv: Callable[[Path, bool], list]
    partial: Callable[[Path, Path], None]
    final: Callable[[Path, Path], None]


@dataclass
class Tally:
    """What a command's chains did: kills (by write step and by time), files checked after
    kills, re-runs that finished equal to the reference."""

    name: str
    kills_at_writes: int = 0
    kills_in_time: int = 0
    files_checked: int = 0
    chains_equal: int = 0
    trials: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return self.kills_at_writes + self.kills_in_time

    def row(self) -> dict:
        return {
            "command": self.name,
            "kills": self.kills,
            "at_write_steps": self.kills_at_writes,
            "in_time": self.kills_in_time,
            "files_checked": self.files_checked,
            "torn_files": 0,  # a torn file fails the check at once
            "resumed_equal": self.chains_equal,
            "seconds": round(self.seconds, 1),
        }


def reference(server: ForkServer, command: Command, folder: Path) -> tuple[Path, dict]:
    """An uninterrupted run: its folder and its answer (wall time, write steps)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    command.setup(folder)
    answer = server.run(command.argv(folder, False), folder, fault="count@0")
    assert answer["code"] == 0, (folder / "child.log").read_text()[-3000:]
    return folder, answer


def kill_chains(
    server: ForkServer,
    command: Command,
    root: Path,
    kills: int,
    seed: int,
    max_chain: int = 4,
) -> Tally:
    """Chains of kills on `command` until `kills` kills are done; every chain ends with a
    finished re-run compared with the reference. Moments alternate between a random write
    step of the reference run and a random time within its wall time."""
    started = time.monotonic()
    ref, answer = reference(server, command, root / "reference")
    steps, seconds = answer["steps"], answer["seconds"]
    rng = random.Random(seed)
    tally = Tally(command.name)
    chain = 0
    while tally.kills < kills:
        work = root / f"chain-{chain}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        command.setup(work)
        again = False
        for link in range(max_chain + 1):
            last = link == max_chain or tally.kills >= kills
            moment = {} if last else _moment(rng, link + chain, steps, seconds)
            result = server.run(command.argv(work, again), work, **moment)
            tally.trials += 1
            if not result["killed"]:
                log = (work / "child.log").read_text()[-3000:]
                assert result["code"] == 0, f"{command.name} failed:\n{log}"
                break
            if moment.get("fault"):
                tally.kills_at_writes += 1
            else:
                tally.kills_in_time += 1
            tally.files_checked += check_whole(work)
            command.partial(work, ref)
            again = True
        command.final(work, ref)
        tally.chains_equal += 1
        chain += 1
    tally.seconds = time.monotonic() - started
    return tally


def _moment(rng: random.Random, index: int, steps: int, seconds: float) -> dict:
    if index % 2 == 0 and steps:
        return {"fault": f"kill@{rng.randint(1, steps)}"}
    return {"kill_after": rng.uniform(0.0, seconds)}


if __name__ == "__main__":
    serve()
