"""What `softprompt migrate` checks before it writes anything: the source model loads, the
target is another model, the data has texts, the label words can be said by the new
tokenizer. Each failure is one line naming what to fix."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from softprompt.data import Example
from softprompt.errors import ConfigError, DataError, ModelError, SoftpromptError, UsageError
from softprompt.models import Backbone, load_backbone


def load_model(spec: str | Backbone, role: str, dtype: str, device: str | None) -> Backbone:
    """A model of the migration (`role`: "source" or "target"), or one line saying why not."""
    if isinstance(spec, Backbone):
        return spec
    try:
        return load_backbone(str(spec), dtype=dtype, device=device or "cpu")
    except (SoftpromptError, OSError, ValueError) as exc:
        hint = "give it with --from MODEL" if role == "source" else "check --to"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"the {role} model {spec} cannot be loaded ({first}); {hint}") from exc


def check_other_model(source: Backbone, target: Backbone) -> None:
    """A migration goes to another model: the same model would only copy the prompt."""
    if source.name == target.name:
        raise UsageError(
            f"--to {target.name} is the model the prompt already runs on; migrate it to "
            "another model (or use the prompt as it is)"
        )


def check_texts(examples: list[Example], name: str, dev_fraction: float) -> list[Example]:
    """The inputs that hold text; none at all is an error, and so are too few to hold some
    out for the dev checks."""
    texts = [e for e in examples if e.text and e.text.strip()]
    if not texts:
        raise DataError(f"{name} holds no texts to migrate on; give a file with a text field")
    if round(len(texts) * dev_fraction) < 1 or round(len(texts) * dev_fraction) == len(texts):
        raise DataError(
            f"{name} holds {len(texts)} text(s): too few to keep {dev_fraction:.0%} of them "
            "for the held-out checks and train on the rest; give more texts"
        )
    return texts


def check_sayable(verbalizer: dict[str, str], target: Backbone) -> None:
    """Every label word must be writable in the new model's tokens: a word its tokenizer
    turns into the unknown token (or into nothing) cannot be scored there."""
    tokenizer = target.tokenizer
    unknown = tokenizer.unk_token_id
    for label, word in verbalizer.items():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        if not ids or (unknown is not None and unknown in ids):
            raise ConfigError(
                f"the label word {word!r} (label {label!r}) cannot be written with the "
                f"tokenizer of {target.name}; give words it knows with --verbalizer "
                '\'{"LABEL": " word", ...}\''
            )


def artifact_hash(source: object) -> str | None:
    """sha256 of the artifact file (of every file of a folder, in name order); None for an
    artifact given in memory."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()
