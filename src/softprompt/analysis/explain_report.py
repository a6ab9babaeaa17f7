"""The explain report as `softprompt explain` writes it: the explain result, plus a 2-D projection
of the prompt's tokens among the vocabularies of the models it was explained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from softprompt.analysis.projection import project
from softprompt.analysis.report import write_report
from softprompt.artifacts import open_prompt
from softprompt.errors import UsageError
from softprompt.methods.prompt import SoftPrompt
from softprompt.models import Backbone

PROJECTIONS = ("tsne", "umap", "pca", "none")


def check_projection(method: str) -> None:
    """Refuse an unknown projection method before any model is loaded."""
    if method not in PROJECTIONS:
        raise UsageError("--projection must be tsne, umap, pca or none")


def prompt_projection(
    prompt: SoftPrompt, backbones: list[Backbone], method: str = "tsne"
) -> dict[str, np.ndarray] | None:
    """The prompt's tokens among samples of each model's vocabulary embeddings, in the prompt's
    own space: a model of another hidden size contributes no points. None for method "none"."""
    check_projection(method)
    if method == "none":
        return None
    tables = [
        b.embedding_table() if b.hidden_size == prompt.hidden_size else prompt.embedding[:0]
        for b in backbones
    ]
    return project(prompt.embedding, tables, method=method)


def write_explain_report(
    result: dict,
    prompt: str | Path | SoftPrompt,
    backbones: list[Backbone],
    folder: str | Path | None = None,
    *,
    projection: str = "tsne",
) -> dict[str, str]:
    """Write the report of an `explain(...)` result with the projection figure (tsne, umap, pca,
    or none for no figure) into `folder`, by default PROMPT-explain beside the prompt file;
    returns the written files by kind, as `write_report` does."""
    check_projection(projection)
    from_file = isinstance(prompt, (str, Path))
    soft, path = (None, Path(prompt)) if from_file else (prompt, None)
    if folder is None:
        if path is None:
            raise UsageError("give the report folder: the prompt is not a file to put it beside")
        folder = path.with_name(path.stem + "-explain")
    points = None
    if projection != "none":
        points = prompt_projection(
            open_prompt(path) if soft is None else soft, backbones, projection
        )
    return write_report(result, points, Path(folder))
