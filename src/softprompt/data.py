"""Data sources: local JSONL/CSV/TXT files or folders, and Hugging Face data sets (`hf:NAME`).

Every example remembers where it came from (file and line) so that a bad value can be named.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from softprompt.errors import DataError

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {
    "train": ("train",),
    "dev": ("dev", "validation", "valid", "val"),
    "test": ("test",),
}
SUFFIXES = (".jsonl", ".csv", ".txt")


@dataclass(frozen=True)
class Example:
    """One input: its text (and second text for pairs), label if any, and where it came from."""

    text: str
    label: str | None = None
    text_b: str | None = None
    where: str = ""

    def __post_init__(self) -> None:
        for name, value in (("text", self.text), ("text_b", self.text_b)):
            check_unicode(value, f"{self.where}: {name}" if self.where else name)


def check_unicode(text: str | None, where: str) -> None:
    """Refuse a lone surrogate (from a JSON escape like \\ud800, or bytes that were not UTF-8
    in a command-line argument): it is not Unicode text, and tokenizers fail on it with a
    traceback."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = f"\\u{ord(text[exc.start]):04x}"
        raise DataError(
            f"{where} holds {code} at character {exc.start}, half of a surrogate pair and not "
            "valid Unicode text; fix that character (or the bytes that were not UTF-8)"
        ) from None


@dataclass(frozen=True)
class DataSpec:
    """Which fields to read and how to split; mirrors the task section of a config."""

    source: str
    text_field: str = "text"
    label_field: str | None = "label"
    text_b_field: str | None = None
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    hf_config: str | None = None
    hf_splits: tuple[tuple[str, str], ...] = (
        ("train", "train"),
        ("dev", "validation"),
        ("test", "test"),
    )
    max_examples: int | None = None


def canonical_split(split: str) -> str:
    """train, dev or test for a split name or its alias (validation, valid and val are dev):
    the names a split file may have are the names a user may ask for."""
    for name, aliases in SPLIT_ALIASES.items():
        if split in aliases:
            return name
    raise DataError(
        f"unknown split {split!r}; use one of {', '.join(SPLITS)} (validation also means dev)"
    )


def load_split(spec: DataSpec, split: str) -> list[Example]:
    """The examples of one split (train, dev or test, or an alias of one), never empty."""
    split = canonical_split(split)
    if spec.source.startswith("hf:"):
        examples = _load_hf(spec, split)
    else:
        examples = _load_local(spec, split)
    if spec.max_examples is not None:
        examples = examples[: spec.max_examples]
    if not examples:
        raise DataError(f"split {split!r} of {spec.source} is empty; add examples to it")
    return examples


def _load_local(spec: DataSpec, split: str) -> list[Example]:
    path = Path(spec.source).expanduser()
    if path.is_dir() and path.suffix.lower() in SUFFIXES:
        raise DataError(
            f"{path} is a folder, not a data file; give a {path.suffix} file there, or the "
            "folder that holds the split files"
        )
    if path.is_dir():
        for name in SPLIT_ALIASES[split]:
            for suffix in SUFFIXES:
                candidate = path / f"{name}{suffix}"
                if candidate.is_file():
                    return read_file(candidate, spec)
                if candidate.is_dir():
                    raise DataError(
                        f"{candidate} is a folder, not a data file; put the {split} examples "
                        f"in a file of that name (or rename the folder)"
                    )
        raise DataError(
            f"no {split} file in {path}: expected one of "
            f"{', '.join(n + '.jsonl' for n in SPLIT_ALIASES[split])} (or .csv/.txt)"
        )
    if path.is_file():
        return _seeded_split(read_file(path, spec), spec, split)
    raise DataError(
        f"data not found: {spec.source} (a folder, a .jsonl/.csv/.txt file, or hf:NAME)"
    )


def _seeded_split(examples: list[Example], spec: DataSpec, split: str) -> list[Example]:
    """Split one file into train/dev/test by the configured fractions, reproducibly."""
    order = list(range(len(examples)))
    random.Random(spec.split_seed).shuffle(order)
    n_dev = round(len(order) * spec.dev_fraction)
    n_test = round(len(order) * spec.test_fraction)
    parts = {
        "dev": order[:n_dev],
        "test": order[n_dev : n_dev + n_test],
        "train": order[n_dev + n_test :],
    }
    return [examples[i] for i in sorted(parts[split])]


def read_file(path: Path, spec: DataSpec) -> list[Example]:
    """Read one JSONL, CSV or TXT file into examples, naming the line of any problem."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path, spec)
        if suffix == ".csv":
            return _read_csv(path, spec)
        if suffix == ".txt":
            return _read_txt(path, spec)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .csv or .txt")


def _read_jsonl(path: Path, spec: DataSpec) -> list[Example]:
    with path.open(encoding="utf-8") as handle:
        return [record_to_example(r, spec, where) for r, where in jsonl_records(handle, path)]


def _read_csv(path: Path, spec: DataSpec) -> list[Example]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [record_to_example(r, spec, where) for r, where in csv_records(handle, path)]


def jsonl_records(lines: Iterable[str], name: str | Path) -> Iterator[tuple[dict, str]]:
    """Each JSON object of a JSONL stream with its `name:line`, blank lines skipped; a line
    that is not a JSON object is an error naming the line. Shared by data files and the batch
    inputs of `predict`/`generate` (which keep the records as they are)."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield record, where


def csv_records(lines: Iterable[str], name: str | Path) -> Iterator[tuple[dict, str]]:
    """Each row of a CSV stream (header first) as a dict with its `name:line`; a row with the
    wrong number of columns, or malformed CSV, is an error naming the line."""
    reader = csv.DictReader(lines)
    if not reader.fieldnames:
        return
    try:
        for record in reader:
            where = f"{name}:{reader.line_num}"
            if None in record or any(value is None for value in record.values()):
                raise DataError(
                    f"{where}: expected {len(reader.fieldnames)} columns "
                    f"({', '.join(reader.fieldnames)}), the row has a different number"
                )
            yield record, where
    except csv.Error as exc:
        raise DataError(f"{name}:{reader.line_num}: malformed CSV ({exc})") from exc


def _read_txt(path: Path, spec: DataSpec) -> list[Example]:
    """Plain text has no labels: one example per paragraph (blank-line separated)."""
    if spec.label_field is not None:
        raise DataError(f"{path}: a .txt file has no labels; use .jsonl or .csv for classification")
    text = path.read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in text.split("\n\n")]
    return [Example(text=p, where=f"{path}") for p in paragraphs if p]


def record_to_example(record: dict, spec: DataSpec, where: str) -> Example:
    """Pick the configured fields from a record; missing fields list what is available."""

    def field(name: str) -> str:
        if name not in record:
            available = ", ".join(map(str, record)) or "none"
            raise DataError(
                f"{where}: field {name!r} not found (available: {available}); set the task's "
                f"{_which_key(name, spec)} to one of them"
            )
        value = record[name]
        if value is None or isinstance(value, (dict, list)):
            raise DataError(
                f"{where}: field {name!r} must be text (or a number), got "
                f"{json.dumps(value, default=str)}; fill it in or drop the record"
            )
        return str(value)

    return Example(
        text=field(spec.text_field),
        label=field(spec.label_field) if spec.label_field else None,
        text_b=field(spec.text_b_field) if spec.text_b_field else None,
        where=where,
    )


def _which_key(name: str, spec: DataSpec) -> str:
    if name == spec.label_field:
        return "label_field"
    if name == spec.text_b_field:
        return "text_b_field"
    return "text_field"


def _load_hf(spec: DataSpec, split: str) -> list[Example]:
    """A Hugging Face data set by hub name, or a local copy (`save_to_disk` folder or files)."""
    import datasets

    name = spec.source.removeprefix("hf:")
    split_name = dict(spec.hf_splits).get(split, split)
    local = Path(name).expanduser()
    try:
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split_name not in loaded:
                    raise DataError(
                        f"{spec.source} has no split {split_name!r} (has: {', '.join(loaded)}); "
                        f"map it with task.hf_splits"
                    )
                loaded = loaded[split_name]
        else:
            loaded = datasets.load_dataset(name, spec.hf_config, split=split_name)
    except DataError:
        raise
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
        raise DataError(
            f"cannot load Hugging Face data set {name!r} split {split_name!r}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
            "(the hub may be offline here: use a local copy saved with save_to_disk)"
        ) from exc
    names = _label_names(loaded, spec.label_field)
    examples = []
    for index, record in enumerate(loaded):
        if names is not None and spec.label_field in record:
            record = {**record, spec.label_field: names[record[spec.label_field]]}
        examples.append(record_to_example(record, spec, f"{spec.source}[{split_name}][{index}]"))
    return examples


def _label_names(dataset, label_field: str | None) -> list[str] | None:
    """Class names when the label column is a ClassLabel (integers with names)."""
    feature = dataset.features.get(label_field) if label_field else None
    return list(feature.names) if feature is not None and hasattr(feature, "names") else None
