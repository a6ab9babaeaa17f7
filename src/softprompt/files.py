"""Files as softprompt writes and reads them: every file and folder replaced atomically (never
half a file, never a moment without one), JSON lines appended whole, safetensors read with one
clear error for anything that is not readable.

A file is written to a temporary name beside its target, fsynced, renamed over the target and
the folder fsynced: a reader (or a process killed at any moment, or a power loss) sees the old
file or the new one. A folder is filled under a temporary name and swapped with the old one in
one `renameat2(RENAME_EXCHANGE)` on Linux, so the target is never absent (a served adapter
folder stays served); see `atomic_folder`. Where the system has no exchange, the old folder is
moved aside and put back if the new one cannot take its place. See docs/reliability.md.

`SOFTPROMPT_FAULT` (tests only, read at each write step): `kill@N` SIGKILLs the process at its
Nth write step, `ENOSPC@N` (or `EROFS@N`, `EACCES@N`) fails it there with that OSError; the
steps are `fault_point`'s calls (content written, fsynced, renamed, a line appended).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from softprompt.errors import OutputError, PromptFileError

FAULT_VARIABLE = "SOFTPROMPT_FAULT"
_faults: dict = {"plan": None, "count": 0}
_NO_ROOM = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def fault_point(where: Path) -> None:
    """One write step on `where`: counted, and failed or killed there when `SOFTPROMPT_FAULT`
    asks (the crash tests' way to stop a process inside a write)."""
    plan = os.environ.get(FAULT_VARIABLE)
    if not plan:
        return
    if plan != _faults["plan"]:  # a new plan counts from its first step
        _faults.update(plan=plan, count=0)
    _faults["count"] += 1
    action, _, at = plan.partition("@")
    if _faults["count"] != int(at or 0):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = getattr(errno, action)
    raise OSError(code, os.strerror(code), str(where))


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` to write; when the block ends without an error it is
    fsynced and renamed over `target` (never half a file), else removed and `target` is left
    as it was. The temporary file is created with mode 0666 and the kernel applies the umask,
    so the file gets the mode a plain `open()` would give (no process-wide umask read). A full
    disk or a folder that cannot be written is one `OutputError`."""
    target = Path(target)
    with _writing(target):
        temporary = _new_temporary(target)
        try:
            yield temporary
            fault_point(temporary)
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            fault_point(temporary)
            os.replace(temporary, target)
            fault_point(target)
            sync_folder(target.parent)
        finally:
            temporary.unlink(missing_ok=True)


def _new_temporary(target: Path) -> Path:
    """An empty file with a unique hidden name beside `target`, made by `open(O_EXCL)` with
    mode 0666 so the umask applies as for any new file."""
    while True:
        temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temporary
        except FileExistsError:
            continue


@contextmanager
def _writing(target: Path) -> Iterator[None]:
    """OSErrors of writing `target` that the user fixes (no space, a folder that cannot be
    written) as one line each."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise OutputError(
                f"cannot write {target}: no space left on its disk ({exc.strerror}); free some "
                "space or write to another folder"
            ) from exc
        if exc.errno in _NOT_WRITABLE and _beside(exc.filename, target):
            raise OutputError(
                f"cannot write {target}: {target.parent} is not writable ({exc.strerror}); "
                "choose a folder you can write to"
            ) from exc
        raise


def _beside(filename: object, target: Path) -> bool:
    """Whether an error's file is `target` or one beside it (a temporary file): a permission
    error on some other file (an input) is not this write's."""
    if not filename:
        return False
    path = Path(os.fsdecode(filename))
    return path == target or path.parent == target.parent


def sync_folder(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a power loss (a no-op where folders cannot
    be opened, as on Windows)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(handle)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `target` to fill; when the block ends without an error it
    takes `target`'s place, else it is removed and `target` is left as it was.

    An existing `target` is swapped with the new folder in one rename (Linux
    `renameat2(RENAME_EXCHANGE)`), so there is no moment without a `target` (a server watching
    an adapters folder never sees it gone) and the old copy ends under the hidden name and is
    removed. Where the exchange is not available (another OS, a file system without it) the
    old folder is moved aside, the new one renamed in, and the old one put back if that
    fails: a short moment without `target`, never a lost one. The folder is made by `mkdir`
    with mode 0777, so the umask applies as for any new folder."""
    target = Path(target)
    with _writing(target):
        staging = _new_staging(target)
        try:
            yield staging
            fault_point(staging)
            _sync_tree(staging)
            fault_point(staging)
            _swap_in(staging, target)
            fault_point(target)
            sync_folder(target.parent)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def _new_staging(target: Path) -> Path:
    while True:
        staging = target.parent / f".{target.name}-{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir(0o777)
            return staging
        except FileExistsError:
            continue


def _sync_tree(folder: Path) -> None:
    """fsync every file in `folder` and the folder itself (before it takes its place)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    sync_folder(folder)


def _swap_in(staging: Path, target: Path) -> None:
    """Put the complete folder `staging` at `target`; the old `target`, if any, ends at
    `staging` (the caller removes it)."""
    if not target.exists():
        staging.rename(target)
        return
    if _exchange(staging, target):
        return
    aside = target.parent / f".{target.name}-old-{uuid.uuid4().hex[:12]}"
    target.rename(aside)
    try:
        staging.rename(target)
    except OSError:
        aside.rename(target)  # the old folder back where it was, never left hidden
        raise
    aside.rename(staging)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic rename; False where the system cannot (then nothing
    moved)."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    done = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def append_line(handle: int, record: dict, where: Path) -> None:
    """Append one JSON line to the file open at descriptor `handle` (opened with O_APPEND) in
    a single write, so a line is whole or (killed inside the write, or a power loss) the last
    line is torn, which `read_json_lines` leaves out."""
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fault_point(where)
    with _writing(where):
        written = os.write(handle, data)
        while written < len(data):  # a short write (a signal, a full disk): finish the line
            written += os.write(handle, data[written:])


def read_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file, leaving out a torn last line (one without its
    newline or not JSON: a write cut by a kill or a power loss); an unreadable line before the
    last is kept out too."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_text_atomic(target: Path, text: str) -> None:
    """Replace the text file `target` atomically (see `atomic_file`)."""
    with atomic_text_file(Path(target)) as handle:
        handle.write(text)


def write_safetensors_atomic(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], target: Path
) -> None:
    """Write a safetensors file atomically (see `atomic_file`)."""
    data = save(tensors, metadata=metadata)  # bytes first: a full disk is then an OSError
    with atomic_file(target) as temporary:
        temporary.write_bytes(data)


@contextmanager
def atomic_text_file(target: Path) -> Iterator[TextIO]:
    """A UTF-8 text file that appears at `target` only once the block ends without an error
    (see `atomic_file`)."""
    with (
        atomic_file(target) as temporary,
        temporary.open("w", encoding="utf-8", newline="\n") as handle,
    ):
        yield handle
        handle.flush()


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, with clear errors for bad files."""
    source = Path(path)
    if source.is_dir():
        raise PromptFileError(folder_given(source))
    if not source.is_file():
        raise PromptFileError(f"prompt file not found: {source}")
    if source.stat().st_size == 0:
        raise PromptFileError(
            f"{source} is empty (0 bytes); save or copy the prompt file again (a run writes "
            "RUN/prompt.safetensors)"
        )
    try:
        tensors = load_file(source)
        with safe_open(source, framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PromptFileError(
            f"{source} is not a readable safetensors file ({str(exc).splitlines()[0]})"
        ) from exc
    return tensors, metadata


def folder_given(folder: Path) -> str:
    """What to say when a folder is given where a prompt file is expected: a PEFT adapter is
    imported first, a run folder holds its prompt file, any other folder is simply not one."""
    if (folder / "adapter_config.json").is_file():
        return (
            f"{folder} is a PEFT adapter folder, not a prompt file; bring it in with "
            f"softprompt import {folder} --from peft --out NEW.safetensors and use that file"
        )
    if (folder / "prompt.safetensors").is_file():
        return f"{folder} is a run folder; give its prompt file, {folder / 'prompt.safetensors'}"
    return f"{folder} is a folder, not a prompt file; give the prompt's .safetensors file"
