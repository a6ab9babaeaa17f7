"""`softprompt migrate`: a trained prompt moved to another base model without labels, by
distillation from the old pair (old model + old prompt) on unlabelled inputs.

`migrate` checks everything first (nothing is written on a bad input), then for each target
model trains one student through the `distill` task (softprompt.tasks.distill) and the
unchanged trainer, and writes the best student with its provenance in the header. Several
targets get one student each: the models differ in tokenizer and hidden size, and one joint
student would trade one target's agreement for another's, while separate students are each
as good as their own model allows and cost the same teacher pass (the teacher file is shared
input, computed per run)."""

from __future__ import annotations

import time
from pathlib import Path

from softprompt.artifacts import ArtifactSource
from softprompt.batch_files import read_inputs
from softprompt.config import config_to_dict
from softprompt.errors import UsageError
from softprompt.migration.checks import (
    artifact_hash,
    check_other_model,
    check_sayable,
    check_texts,
    load_model,
)
from softprompt.migration.classify import (
    Pair,
    distill_task,
    finish,
    labelled_report,
    student_config,
    student_start,
    student_task,
    train_student,
    write_inputs,
)
from softprompt.migration.generate import INPUTS as TEXT_INPUTS
from softprompt.migration.generate import TOPK, write_text_inputs
from softprompt.models import Backbone
from softprompt.session import Session
from softprompt.tasks.classification import ClassificationTask
from softprompt.tasks.distill import REFERENCES
from softprompt.training.resume import run_config
from softprompt.training.run_dir import RunDir

Target = str | Backbone
GENERATION = ("lm", "suffix")
SUPPORTED = "classification, lm and suffix artifacts migrate"
TEXT_WINDOW = 128  # tokens of a start and its continuation


def migrate(
    artifact: ArtifactSource,
    to: Target | list[Target],
    data: str | Path,
    *,
    out: str | Path | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    steps: int = 200,
    method: str | None = None,
    config: str | Path | None = None,
    source: Target | None = None,
    template: str | None = None,
    verbalizer: dict[str, str] | None = None,
    shift_weight: float = 0.5,
    reference: str = "teacher",
    own_weight: float = 0.5,
    dev_fraction: float = 0.2,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 42,
    text_field: str = "text",
    max_new_tokens: int = 40,
    temperature: float = 0.8,
    dtype: str = "float32",
    progress: bool = True,
) -> dict:
    """Train a new artifact on `to` that behaves like `artifact` on its own model (`source`,
    else the model the artifact records), from the texts of `data` alone (a JSONL/CSV/TXT
    file, or "-" for stdin; a label column only reports accuracy). Returns the summary; with
    several targets, {"migrations": [one summary per target]} and `out` a folder."""
    targets = list(to) if isinstance(to, (list, tuple)) else [to]
    if not targets:
        raise UsageError("give the model to migrate to with --to MODEL")
    _check_objective(shift_weight, reference, own_weight)
    options = dict(method=method, config=config, steps=steps, batch_size=batch_size, lr=lr)
    options |= dict(seed=seed, shift_weight=shift_weight, reference=reference)
    options |= dict(own_weight=own_weight, dev_fraction=dev_fraction)
    options |= dict(max_new_tokens=max_new_tokens, temperature=temperature)
    common = dict(source=source, template=template, verbalizer=verbalizer, resume=resume)
    common |= dict(text_field=text_field, dtype=dtype, progress=progress, dev_fraction=dev_fraction)
    if len(targets) == 1:
        return _migrate_one(artifact, targets[0], data, out, run_dir, options, **common)
    if run_dir is not None:
        raise UsageError("--run-dir names one run; with several --to models leave it out")
    folder = Path(out) if out is not None else None
    return {
        "migrations": [
            _migrate_one(artifact, t, data, _out_in(folder, artifact, t), None, options, **common)
            for t in targets
        ]
    }


def _check_objective(shift_weight: float, reference: str, own_weight: float) -> None:
    weights = (shift_weight, own_weight)
    if reference not in REFERENCES or not all(0.0 <= w <= 1.0 for w in weights):
        raise UsageError(
            f"--reference {reference!r} / --shift-weight {shift_weight} / --own-weight "
            f"{own_weight}: use teacher, shifted or ensemble, and weights from 0 to 1"
        )


def _migrate_one(artifact, to, data, out, run_dir, options, **common) -> dict:
    """One target: checks, the teacher pass, the student's training, the written artifact."""
    started = time.perf_counter()
    pair, examples, name = _open_pair(artifact, to, data, common)
    generation = pair.session.artifact.task.get("type", "classification") in GENERATION
    task = None if generation else _checked_student_task(pair, common)
    out = Path(out) if out is not None else _out_in(None, artifact, to)
    run = Path(run_dir) if run_dir is not None else out.with_name(out.stem + ".run")
    options = {**options, "method": options["method"] or pair.session.artifact.method}
    provenance = {
        "source_artifact": str(artifact) if isinstance(artifact, (str, Path)) else "in memory",
        "source_sha256": artifact_hash(artifact),
        "source_model": pair.source.name,
        "source_method": pair.session.artifact.method,
        "data": name,
        "inputs": len(examples),
    }
    if common["resume"]:
        raw, start = config_to_dict(run_config(run)), {"start": "resumed"}
    else:
        RunDir(run).check_target()
        RunDir(run).refuse_existing()
        run.mkdir(parents=True, exist_ok=True)
        raw, start = _fresh_config(pair, run, examples, options, task, provenance)
    summary = train_student(raw, run, pair.target, common["resume"], common["progress"])
    provenance |= _outcome(raw, summary, start)
    best = finish(run / "prompt.safetensors", out, provenance)
    report = None if generation else labelled_report(pair, run, raw, best)
    seconds = time.perf_counter() - started
    result = {"path": str(out), "run_dir": str(run), "target": pair.target.name}
    return {**result, **provenance, "labelled": report, "seconds": seconds}


def _open_pair(artifact, to, data, common) -> tuple[Pair, list, str]:
    """The teacher session on its loaded source model, the loaded target and the inputs, each
    checked (nothing is written before)."""
    session = Session(artifact, common["source"], dtype=common["dtype"])
    if session.artifact is None:
        raise UsageError("give the artifact to migrate (a prompt or prefix file)")
    kind = session.artifact.task.get("type", "classification")
    if kind not in ("classification", *GENERATION):
        raise UsageError(f"migrating a {kind!r} artifact is not supported; {SUPPORTED}")
    if isinstance(to, str) and to == str(session.model):
        raise UsageError(f"--to {to} is the model the prompt already runs on; name another")
    inputs = read_inputs(data, text_field=common["text_field"], label_field="label")
    examples = check_texts(inputs.examples, inputs.name, common["dev_fraction"])
    session.model = load_model(session.model, "source", common["dtype"], None)
    target = load_model(to, "target", common["dtype"], None)
    check_other_model(session.model, target)
    spec = to if isinstance(to, str) else target.name
    return Pair(session, session.model, target, spec), examples, inputs.name


def _checked_student_task(pair: Pair, common: dict) -> dict:
    """The student's classification task, its label words checked on the new tokenizer."""
    task = student_task(pair.session, common["template"], common["verbalizer"])
    check_sayable(task["verbalizer"], pair.target)
    ClassificationTask(pair.target, task["template"], task["verbalizer"])  # its errors, up front
    return task


def _fresh_config(pair, run, examples, options, task, provenance) -> tuple[dict, dict]:
    """The teacher pass written into the run folder and the run's config (and its start)."""
    prompt_keys, start = student_start(pair, options["method"], run)
    if task is not None:
        write_inputs(run, examples, pair, provenance)
        return student_config(pair, options, prompt_keys, distill_task(run, options, task)), start
    level = write_text_inputs(run, pair.session, pair.target, examples, options)
    section = text_task(run, options, pair.session.artifact.task)
    return student_config(pair, options, prompt_keys, section), {**start, "distillation": level}


def text_task(run: Path, options: dict, record: dict) -> dict:
    """The `distill_text` task section: starts and continuations, the task to record, and the
    top-k teacher file where there is one (token level)."""
    topk = run / TOPK
    return {
        "type": "distill_text",
        "data": str((run / TEXT_INPUTS).absolute()),
        "text_b_field": "continuation",
        "record": {k: v for k, v in record.items() if k != "max_examples"},
        "teacher": str(topk.absolute()) if topk.is_file() else None,
        "max_length": TEXT_WINDOW,
        "dev_fraction": options["dev_fraction"],
        "test_fraction": 0.0,
        "split_seed": options["seed"],
    }


def _outcome(raw: dict, summary: dict, start: dict) -> dict:
    """What the header and the summary record about the student's training."""
    best = (summary.get("best_dev") or {}) if summary else {}
    task = raw["task"]
    return {
        "objective": _objective(task),
        "student_start": start,
        "method": raw["method"],
        "steps": summary["steps"],
        "best_step": summary["best_step"],
        "teacher_agreement": best.get("agreement"),
        "held_out_kl": best.get("kl"),
        "train_seconds": summary["train_seconds"],
    }


def _objective(task: dict) -> dict:
    """What the student was trained against, in words and settings."""
    if task["type"] == "distill_text":
        level = "token-level top-k KL" if task.get("teacher") else "sequence-level"
        return {"what": f"{level} distillation of the teacher's continuations"}
    what = "plain KL" if task["shift_weight"] == 0 else "KL + shift"
    keys = {"shift_weight": task["shift_weight"], "reference": task["reference"]}
    if task["reference"] == "ensemble":
        keys["own_weight"] = task["own_weight"]
        what = f"{what}, toward the ensemble of the teacher and the own zero-shot"
    return {**keys, "what": what}


def _out_in(folder: Path | None, artifact, to: Target) -> Path:
    """The default artifact path for target `to`: `<artifact>-to-<model>.safetensors` beside
    the artifact (or in `folder`)."""
    name = to.name if isinstance(to, Backbone) else str(to)
    slug = Path(name.rstrip("/")).name.replace(" ", "_") or "model"
    stem = Path(str(artifact)).stem if isinstance(artifact, (str, Path)) else "prompt"
    base = folder if folder is not None else Path(str(artifact)).parent
    if not isinstance(artifact, (str, Path)) and folder is None:
        base = Path(".")
    return base / f"{stem}-to-{slug}.safetensors"
