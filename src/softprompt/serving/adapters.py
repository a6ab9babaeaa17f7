"""The adapters a server offers: every soft prompt or prefix given, each served under its file
or folder stem, beside the bare base model, each as a `Session` on the served model.

The `--adapters` folder is watched while the server runs (`Adapters.refresh`, every
`--watch-interval` seconds): an artifact or PEFT folder added to it is served under its stem,
a removed one stops being listed, a replaced one is reloaded (requests already running keep
the steering they started with). The folder is polled, not watched through inotify, since a
folder shared by several replicas lives on network storage, where file events do not cross
machines. Names are looked up in memory only: a request's model name never reaches the file
system, and an entry of the folder that points outside it (a symlink) is refused.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from softprompt.errors import SoftpromptError
from softprompt.interop.peft import CONFIG_FILE
from softprompt.methods.base import Artifact
from softprompt.methods.cartridge import compose
from softprompt.models import Backbone
from softprompt.session import Session
from softprompt.steering.base import Steering

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class Adapter:
    """One served model name and its session (the prompt on the served model; none: bare)."""

    name: str
    session: Session
    source: str = ""
    loaded_at: float = field(default_factory=time.time)

    @property
    def steering(self) -> Steering:
        return self.session.steering

    @property
    def artifact(self) -> Artifact | None:
        return self.session.artifact

    @property
    def method(self) -> str:
        return self.artifact.method if self.artifact is not None else "none"


@dataclass
class Entry:
    """A served name's source and state: loaded (`adapter`), refused (`error`), or known but
    not loaded now (`--max-loaded`)."""

    source: Path
    stamp: tuple = ()
    adapter: Adapter | None = None
    error: str | None = None
    loading: threading.Lock = field(default_factory=threading.Lock)  # one load at a time


class RefusedAdapter(SoftpromptError):
    """The name is listed, but its file does not fit the served model (the reason says why)."""


class Adapters(Mapping):
    """The served names, in order: the base model, the artifacts given, then the folder's.

    A mapping from name to `Adapter` (loading one on first use when `max_loaded` keeps only
    the most recently used ones loaded); `refused` holds one line per source refused."""

    def __init__(
        self,
        backbone: Backbone,
        base_name: str,
        artifacts: list[Path],
        folder: Path | None = None,
        max_loaded: int | None = None,
    ) -> None:
        self.backbone, self.base_name, self.folder = backbone, base_name, folder
        self.max_loaded = max_loaded
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._used: OrderedDict[str, None] = OrderedDict()
        self._fixed = {
            base_name: Entry(Path(), adapter=Adapter(base_name, Session(None, backbone)))
        }
        self.refused: list[str] = []
        for source in artifacts:
            self._add_fixed(source)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    # --- the mapping ---------------------------------------------------------------------

    def __getitem__(self, name: str) -> Adapter:
        """The adapter, loaded now if it is not (this reads its file: call it off the event
        loop and the engine thread; `loaded` answers from memory only). `a+b`: composed."""
        if "+" in name and self._find(name) is None:
            return self._composed(name)
        entry = self._known(name)
        if entry.adapter is None:
            self._load_on_use(name, entry)
        if name in self._entries:
            self._touch(name)
        return entry.adapter

    def _composed(self, name: str) -> Adapter:
        """`a+b`: the served prefixes or cartridges named, their keys/values concatenated into
        one prefix (built per request, not kept); an unknown part is a KeyError, a misfit (a
        soft prompt, a sum over the context) a RefusedAdapter."""
        parts = [self[part] for part in name.split("+")]
        try:
            artifact = compose([p.artifact for p in parts], [p.name for p in parts])
            session = Session(artifact, self.backbone)
            session.source = name
            return Adapter(name, session.load(), source=name)
        except SoftpromptError as exc:
            raise RefusedAdapter(str(exc)) from None

    def loaded(self, name: str) -> Adapter | None:
        """The adapter if it is loaded now, else None (KeyError: not served; RefusedAdapter:
        refused), from memory only. A composition (`a+b`) is built per request: None."""
        if "+" in name and self._find(name) is None:
            return None
        entry = self._known(name)
        adapter = entry.adapter
        if adapter is not None and name in self._entries:
            self._touch(name)
        return adapter

    def _find(self, name: str) -> Entry | None:
        return self._fixed.get(name) or self._entries.get(name)

    def _known(self, name: str) -> Entry:
        entry = self._find(name)
        if entry is None:
            raise KeyError(name)
        if entry.error is not None:
            raise RefusedAdapter(entry.error)
        return entry

    def __iter__(self) -> Iterator[str]:
        fixed, entries = dict(self._fixed), dict(self._entries)
        names = [n for n, e in entries.items() if e.error is None]
        return iter([*fixed, *sorted(n for n in names if n not in fixed)])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def listing(self) -> list[dict]:
        """Every name for `GET /v1/models`, the refused ones with their reason."""
        rows = []
        for name, entry in [*self._fixed.items(), *sorted(self._entries.items())]:
            row = {"id": name, "method": None, "loaded": entry.adapter is not None}
            if entry.adapter is not None:
                row.update(method=entry.adapter.method, loaded_at=entry.adapter.loaded_at)
            if entry.error is not None:
                row["error"] = entry.error
            rows.append(row)
        return rows

    # --- the folder ----------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the served names in line with the folder: add, reload and drop entries."""
        if self.folder is None:
            return
        found = folder_sources(self.folder)
        changed = {  # files read here, outside the lock that the request path takes
            name: self._entry(name, source, stamp)
            for name, (source, stamp) in found.items()
            if name not in self._entries or self._entries[name].stamp != stamp
        }
        with self._lock:
            for name in [n for n in self._entries if n not in found]:
                del self._entries[name]
                self._used.pop(name, None)
            self._entries.update(changed)

    def watch(self, interval: float) -> None:
        """Refresh every `interval` seconds on a thread of its own, until `close`."""
        if self.folder is None or self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except OSError as exc:  # the folder went away for a moment: try again
                    _log(f"cannot read --adapters {self.folder}: {exc}")

        self._thread = threading.Thread(target=loop, name="softprompt-adapters", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- loading -------------------------------------------------------------------------

    def _add_fixed(self, source: Path) -> None:
        name = source.stem if source.is_file() else source.name
        try:
            adapter = _load(name, source, self.backbone)
        except SoftpromptError as exc:
            self.refused.append(f"{source}: {exc}")
            return
        if name in self._fixed:
            self.refused.append(f"{source}: the name {name!r} is already served; rename the file")
            return
        self._fixed[name] = Entry(source, adapter=adapter)

    def _entry(self, name: str, source: Path, stamp: tuple) -> Entry:
        """A folder entry, loaded now unless `max_loaded` defers it to its first request."""
        entry = Entry(source, stamp)
        if name in self._fixed:
            entry.error = f"the name {name!r} is already served; rename the file"
        elif not _inside(source, self.folder):
            entry.error = f"{source} points outside {self.folder}; copy the file in instead"
        elif self.max_loaded is None:
            self._try_load(name, entry)
        if entry.error is not None:
            line = f"{source}: {entry.error}"
            self.refused.append(line)
            _log(f"refused: {line}")
        return entry

    def _try_load(self, name: str, entry: Entry) -> None:
        try:
            entry.adapter = _load(name, entry.source, self.backbone)
        except SoftpromptError as exc:
            entry.error = str(exc)

    def _load_on_use(self, name: str, entry: Entry) -> None:
        with entry.loading:  # this entry's own lock: other names are served meanwhile
            if entry.adapter is None and entry.error is None:
                self._try_load(name, entry)
        if entry.error is not None:
            raise RefusedAdapter(entry.error)

    def _touch(self, name: str) -> None:
        """Mark `name` used now; unload the least recently used beyond `max_loaded`."""
        with self._lock:
            self._used.pop(name, None)
            self._used[name] = None
            if self.max_loaded is None:
                return
            while len(self._used) > self.max_loaded:
                oldest, _ = self._used.popitem(last=False)
                if oldest in self._entries:
                    self._entries[oldest].adapter = None


def folder_sources(folder: Path) -> dict[str, tuple[Path, tuple]]:
    """Every `.safetensors` file and PEFT adapter folder in `folder` by its served name, with
    a stamp that changes when it is replaced (hidden names, such as files being written, are
    left out)."""
    found = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.suffix == ".safetensors" and entry.is_file():
            found[entry.stem] = (entry, _stamp([entry]))
        elif entry.is_dir() and (entry / CONFIG_FILE).is_file():
            found[entry.name] = (entry, _stamp(sorted(entry.iterdir())))
    return found


def artifact_sources(paths: list[str | Path], folder: str | Path | None) -> list[Path]:
    """The artifact files given, checked to exist, and the folder checked to be one."""
    if folder is not None and not Path(folder).is_dir():
        raise SoftpromptError(f"--adapters {folder}: not a folder")
    return [Path(p) for p in paths]


def _load(name: str, source: Path, backbone: Backbone) -> Adapter:
    if not NAME.match(name):
        raise SoftpromptError(
            f"{name!r} is not a usable model name (letters, digits, '.', '_', '-'); rename it"
        )
    return Adapter(name, Session(source, backbone).load(), str(source))


def _stamp(paths: list[Path]) -> tuple:
    stats = [p.stat() for p in paths if p.is_file()]
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


def _inside(source: Path, folder: Path | None) -> bool:
    return folder is None or source.resolve().is_relative_to(folder.resolve())


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
