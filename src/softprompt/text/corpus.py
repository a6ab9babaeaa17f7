"""A corpus for self-study: documents read from a text file, a JSONL file or a folder of them,
and cut into chunks of token ids. Pure reading and cutting; tokenizing is the caller's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from softprompt.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
CORPUS_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl")


@dataclass(frozen=True)
class Document:
    """One document of a corpus: where it came from and its text."""

    name: str
    text: str


def read_corpus(source: str | Path | list, text_field: str = "text") -> list[Document]:
    """Every document of `source` (or of each source of a list, in order): a .txt/.md file (one
    document), a .jsonl file (one per line, its `text_field`), or a folder of those (sorted by
    name). Empty documents are dropped; a corpus with no text at all is refused."""
    if isinstance(source, list):
        if not source:
            raise DataError("no corpus given; name at least one document")
        return [doc for one in source for doc in read_corpus(one, text_field)]
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in CORPUS_SUFFIXES)
        if not files:
            raise DataError(
                f"corpus folder {path} holds no {', '.join(CORPUS_SUFFIXES)} files; add some"
            )
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"corpus not found: {path} (a .txt/.md/.jsonl file or a folder of them)")
    documents = [doc for file in files for doc in _read_file(file, text_field)]
    documents = [doc for doc in documents if doc.text.strip()]
    if not documents:
        raise DataError(f"corpus {path} holds no text; give a document with some words in it")
    return documents


def _read_file(path: Path, text_field: str) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix not in CORPUS_SUFFIXES:
        raise DataError(f"{path}: a corpus file is .txt, .md or .jsonl, not {suffix!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason}); re-save it as UTF-8") from exc
    if suffix in TEXT_SUFFIXES:
        return [Document(str(path), text)]
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        value = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise DataError(f"{path}:{number}: no string field {text_field!r} in the record")
        documents.append(Document(f"{path}:{number}", value))
    return documents


def chunk_ids(ids: list[int], size: int) -> list[list[int]]:
    """`ids` cut into consecutive chunks of at most `size` tokens (none dropped)."""
    if size < 1:
        raise ValueError("a chunk holds at least one token")
    return [ids[start : start + size] for start in range(0, len(ids), size)]
