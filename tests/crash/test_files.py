"""Files and folders replaced atomically with no moment of absence, modes under the umask
without touching it, and one-line errors for a full disk and a read-only folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl
from softprompt.files import (
    FAULT_VARIABLE,
    atomic_file,
    atomic_folder,
)


def test_a_replaced_folder_is_never_absent(tmp_path, monkeypatch):
    target = tmp_path / "adapter"
    with atomic_folder(target) as staging:
        (staging / "adapter_config.json").write_text("old")
    seen = []
    real_rename = Path.rename

    def rename(self, to):
        result = real_rename(self, to)
        seen.append(target.is_dir())  # after every rename of the replacement
        return result

    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(os, "rename", lambda a, b: (real_rename(Path(a), b), seen.append(0)))
    with atomic_folder(target) as staging:
        (staging / "adapter_config.json").write_text("new")
    assert all(seen)
    assert (target / "adapter_config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_without_an_exchange_a_failed_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    import softprompt.files as files

    target = tmp_path / "adapter"
    with atomic_folder(target) as staging:
        (staging / "adapter_config.json").write_text("old")
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_rename = Path.rename

    def rename(self, to):
        if Path(to) == target and self.name.startswith(".adapter-") and "-old-" not in self.name:
            raise OSError(5, "Input/output error", str(to))
        return real_rename(self, to)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError), atomic_folder(target) as staging:
        (staging / "adapter_config.json").write_text("new")
    assert (target / "adapter_config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # nothing hidden left


def test_modes_follow_the_umask_without_touching_it(tmp_path, monkeypatch):
    previous = os.umask(0o027)
    try:

        def no_umask(mask):
            raise AssertionError("os.umask called: a process-wide change other threads race")

        monkeypatch.setattr(os, "umask", no_umask)
        with atomic_file(tmp_path / "f.bin") as temporary:
            temporary.write_bytes(b"x")
        with atomic_folder(tmp_path / "d") as staging:
            (staging / "a").write_text("a")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750


# --- full disk, read-only folder --------------------------------------------------------------


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "softprompt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def invoke(monkeypatch, capsys, *args) -> tuple[int, list[str]]:
    """The CLI in this process: its exit code and its `error:` lines."""
    from softprompt import cli as app

    monkeypatch.setattr("sys.argv", ["softprompt", *map(str, args)])
    code = 0
    try:
        app.main()
    except SystemExit as exc:
        code = exc.code
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    return code, errors


def saved_prompt(tiny, tmp_path) -> Path:
    from softprompt.methods.prompt import SoftPrompt, save_prompt

    prompt = SoftPrompt(embedding=torch.randn(4, tiny["llama"].hidden_size))
    return save_prompt(prompt, tmp_path / "p.safetensors")


def predict_args(tiny, tiny_dirs, tmp_path, out: Path) -> list:
    write_jsonl(tmp_path / "in.jsonl", [{"text": "great movie"}])
    args = ["predict", saved_prompt(tiny, tmp_path), "--model", tiny_dirs["llama"]]
    args += ["--verbalizer", '{"negative": " bad", "positive": " good"}']
    return [*args, "--input", tmp_path / "in.jsonl", "--output", out]


@pytest.mark.parametrize("fault", ["ENOSPC", "EROFS", "EACCES"])
def test_a_full_disk_or_a_read_only_folder_is_one_line(
    fault, tiny, tiny_dirs, tmp_path, monkeypatch, capsys
):
    """Injected through the fault hook (the write's own OSError), on `predict --input`."""
    out = tmp_path / "out.jsonl"
    args = predict_args(tiny, tiny_dirs, tmp_path, out)
    monkeypatch.setenv(FAULT_VARIABLE, f"{fault}@1")
    code, lines = invoke(monkeypatch, capsys, *args)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {out}"), lines
    assert ("no space left" in lines[0]) == (fault == "ENOSPC")
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (a real full disk) and a read-only bind of it; skipped where this process
    may not mount (not root, or a container without the right)."""
    disk, read_only = tmp_path / "disk", tmp_path / "ro"
    disk.mkdir()
    read_only.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)):
        pytest.skip("mount is not allowed here; the fault-hook test covers the errors")
    try:
        if not _mount("--bind", "-o", "ro", str(disk), str(read_only)):
            pytest.skip("a read-only bind mount is not allowed here")
        yield disk, read_only
    finally:
        subprocess.run(["umount", str(read_only)], capture_output=True)
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_real_full_disk_and_read_only_folder_are_one_line(
    small_tmpfs, tiny, tiny_dirs, tmp_path, monkeypatch, capsys
):
    disk, read_only = small_tmpfs
    prompt = saved_prompt(tiny, tmp_path)
    export = ["export", prompt, "--format", "peft", "--model", tiny_dirs["llama"]]
    (disk / "filler").write_bytes(b"\0" * 60_000)
    code, lines = invoke(monkeypatch, capsys, *export, "--out", disk / "peft")
    assert code == 1 and len(lines) == 1 and "no space left" in lines[0], lines
    assert not (disk / "peft").exists()
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # nothing half-written
    (disk / "filler").unlink()
    out = read_only / "out.jsonl"
    code, lines = invoke(monkeypatch, capsys, *predict_args(tiny, tiny_dirs, tmp_path, out))
    assert code == 1 and len(lines) == 1, lines
    assert "is not writable (Read-only file system)" in lines[0]
