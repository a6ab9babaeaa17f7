"""Questions about a document: multiple choice scored by each option's log-likelihood, and the
log-likelihood of reference answers, under any steering (a cartridge, the document itself as
keys/values in front, a part of it, or nothing).

A question file is JSONL, one question a line: {"question", "options": [...], "answer": the
index of the right option (or its letter), "reference": a reference answer (optional)}. Each
question is asked as "Question: ...\\nAnswer:"; an option's score is its mean log-probability
per token after that (means, so that long options are not penalised for their length).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from softprompt.data import jsonl_records
from softprompt.errors import DataError
from softprompt.models import Backbone
from softprompt.steering.base import Steering
from softprompt.steering.prefix import PrefixKV, text_prefix
from softprompt.tasks.base import special_tokens
from softprompt.tasks.self_study import continuation_logprobs

LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class Question:
    """One multiple-choice question, its right option's index and a reference answer."""

    question: str
    options: tuple[str, ...]
    answer: int
    reference: str | None = None


def read_questions(path: str | Path) -> list[Question]:
    """The questions of a JSONL file, each checked (one line per problem, with its number)."""
    source = Path(path)
    if not source.is_file():
        raise DataError(f"question file not found: {source} (a .jsonl file, one question a line)")
    lines = source.read_text(encoding="utf-8").splitlines()
    questions = [_question(record, where) for record, where in jsonl_records(lines, source)]
    if not questions:
        raise DataError(f"{source} holds no questions")
    return questions


def _question(record: dict, where: str) -> Question:
    options = record.get("options")
    if (
        not isinstance(options, list)
        or len(options) < 2
        or not all(isinstance(o, str) and o.strip() for o in options)
    ):
        raise DataError(f"{where}: 'options' must list at least two non-empty strings")
    answer = record.get("answer")
    if isinstance(answer, str) and len(answer) == 1 and answer.upper() in LETTERS:
        answer = LETTERS.index(answer.upper())
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(options):
        raise DataError(f"{where}: 'answer' must be the right option's index or letter")
    question, reference = record.get("question"), record.get("reference")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: 'question' must be a non-empty string")
    return Question(question, tuple(options), answer, reference if reference else None)


@torch.no_grad()
def score_questions(
    backbone: Backbone, steering: Steering, questions: list[Question], batch_size: int = 16
) -> dict:
    """Accuracy (the option with the highest mean log-probability per token) and the mean
    log-probability per token of the reference answers, under `steering`."""
    before, _ = special_tokens(backbone.tokenizer)
    rows, starts = [], []
    for q in questions:
        asked = before + _ids(backbone, f"Question: {q.question}\nAnswer:")
        answers = [*q.options, *([q.reference] if q.reference else [])]
        for answer in answers:
            rows.append(asked + _ids(backbone, " " + answer.strip()))
            starts.append(len(asked))
    means = []
    for start in range(0, len(rows), batch_size):
        block = slice(start, start + batch_size)
        logprobs = continuation_logprobs(backbone, steering, rows[block], starts[block])
        for lp, row, first in zip(logprobs, rows[block], starts[block]):
            targets = torch.tensor(row[first:], device=lp.device)
            means.append(float(lp.gather(-1, targets[:, None]).mean()))
    return _tally(questions, means)


def _tally(questions: list[Question], means: list[float]) -> dict:
    correct, references, at = 0, [], 0
    for q in questions:
        scores = means[at : at + len(q.options)]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == q.answer)
        if q.reference:
            references.append(means[at + len(q.options)])
        at += len(q.options) + (1 if q.reference else 0)
    return {
        "accuracy": correct / len(questions),
        "answer_loglik": sum(references) / len(references) if references else None,
        "questions": len(questions),
    }


def document_steering(backbone: Backbone, text: str, limit: int | None = None) -> PrefixKV:
    """The document in context, as the frozen model's own keys/values of its tokens (its first
    `limit` tokens when given): the same as putting the text in front of every question, with
    the document's forward pass run once."""
    before, _ = special_tokens(backbone.tokenizer)
    ids = (before + _ids(backbone, text))[:limit]
    config = backbone.model.config.get_text_config(decoder=True)
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and len(ids) + 64 > context:
        raise DataError(
            f"the document is {len(ids)} tokens; with a question it does not fit the "
            f"{context} positions of {backbone.name}"
        )
    device = backbone.device
    return PrefixKV(*text_prefix(backbone.model, torch.tensor([ids], device=device)))


def _ids(backbone: Backbone, text: str) -> list[int]:
    return backbone.tokenizer(text, add_special_tokens=False).input_ids
