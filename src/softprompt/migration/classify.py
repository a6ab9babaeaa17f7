"""A classification prompt migrated to another model: the teacher (the source model with the
source artifact) labels every unlabelled input once (its label distribution, with and
without the prompt), and the student (the target model with a new prompt) is trained on those
distributions by the registered `distill` task through the unchanged trainer.

The run folder holds what `train` needs to run or resume it from its config alone:
`inputs.jsonl` (the texts, and labels when the data had them: only reported), the teacher file
`teacher.safetensors`, `init.safetensors` (the transfer map's start, where there is one) and
the usual run files. The best student, with where it came from in its header, is written to
`--out`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from softprompt.artifacts import open_artifact
from softprompt.config import config_to_dict, load_config
from softprompt.crossmodel.transfer import transfer_prompt
from softprompt.data import DataSpec, Example, load_split
from softprompt.errors import SoftpromptError, UsageError
from softprompt.files import atomic_text_file
from softprompt.methods.prompt import save_prompt
from softprompt.models import Backbone
from softprompt.session import Session
from softprompt.steering.base import NoSteering
from softprompt.tasks.classification import classification_scores
from softprompt.tasks.distill import Teacher, input_key
from softprompt.training.trainer import train

INPUTS, TEACHER, INIT = "inputs.jsonl", "teacher.safetensors", "init.safetensors"
DEFAULT_LR = {"prefix": 0.003}  # else 0.02: what the example configs train the bundled models at


@dataclass
class Pair:
    """One migration: the teacher session (source model + artifact) and the target model."""

    session: Session
    source: Backbone
    target: Backbone
    target_spec: str


@torch.no_grad()
def teacher_distributions(session: Session, examples: list[Example], batch_size: int = 32):
    """log p and log p0 [N, C]: the teacher's label distribution with its prompt and without,
    each input once (the only teacher passes of a migration)."""
    task = session.classifier
    encoded = [task.encode(e, with_label=False) for e in examples]
    prompted = classification_scores(task, session.steering, encoded, batch_size)
    bare = classification_scores(task, NoSteering(), encoded, batch_size)
    return torch.log_softmax(prompted, -1), torch.log_softmax(bare, -1)


def write_inputs(run_dir: Path, examples: list[Example], pair: Pair, provenance: dict) -> None:
    """inputs.jsonl and teacher.safetensors in the run folder (each written atomically)."""
    unique = list({input_key(e.text, e.text_b): e for e in examples}.items())
    log_p, log_p0 = teacher_distributions(pair.session, [e for _, e in unique])
    labels = pair.session.classifier.labels
    Teacher([k for k, _ in unique], labels, log_p, log_p0, provenance).save(run_dir / TEACHER)
    with atomic_text_file(run_dir / INPUTS) as handle:
        for e in examples:
            record = {"text": e.text}
            if e.text_b is not None:
                record["text_b"] = e.text_b
            if e.label is not None:
                record["label"] = e.label
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def student_start(pair: Pair, method: str, run_dir: Path) -> tuple[dict, dict]:
    """The student's start: the `transfer` map of the source prompt into the target's space
    where the source is a plain soft prompt and the student one too (the map is fitted on the
    words both vocabularies share), else the method's own init. Returns the prompt-section
    keys and what the header records about the start."""
    artifact = pair.session.artifact
    if method != "prompt" or artifact.method != "prompt":
        return {}, {"start": "method init", "why": f"a {artifact.method} -> {method} migration"}
    try:
        mapped = transfer_prompt(artifact, pair.target, source=pair.source)
    except SoftpromptError as exc:
        return {}, {"start": "method init", "why": f"no transfer map: {exc}"}
    save_prompt(mapped, run_dir / INIT)
    keys = {"init": "file", "file": str((run_dir / INIT).absolute())}
    return keys, {"start": "transfer map", "alignment": mapped.init.get("alignment", {})}


def distill_task(run_dir: Path, options: dict, task: dict) -> dict:
    """The `distill` task section: the student's classification task on the inputs and the
    teacher file, with the objective's settings."""
    return {
        **task,
        "type": "distill",
        "data": str((run_dir / INPUTS).absolute()),
        "teacher": str((run_dir / TEACHER).absolute()),
        "shift_weight": options["shift_weight"],
        "reference": options["reference"],
        "own_weight": options["own_weight"],
        "dev_fraction": options["dev_fraction"],
        "test_fraction": 0.0,
        "split_seed": options["seed"],
    }


def student_config(pair: Pair, options: dict, prompt_keys: dict, task: dict) -> dict:
    """The run's config: the base config (--config), the task section, the target model, the
    method and its length, the training settings."""
    raw = config_to_dict(load_config(options["config"])) if options["config"] else {}
    raw["models"] = [pair.target_spec]
    raw.pop("model_weights", None)
    raw["method"] = options["method"]
    prompt = {**raw.get("prompt", {}), **prompt_keys}
    if options["method"] == pair.session.artifact.method or "length" not in prompt:
        prompt.setdefault("length", pair.session.artifact.length)
    raw["prompt"] = prompt
    raw["task"] = task
    train_keys = {k: options[k] for k in ("steps", "batch_size", "lr", "seed") if options[k]}
    train_section = {**raw.get("train", {}), **train_keys}
    train_section.setdefault("lr", DEFAULT_LR.get(options["method"], 0.02))
    every = max(1, train_section.get("steps", 200) // 5)
    train_section.setdefault("eval_every", every)
    train_section.setdefault("checkpoint_every", every)
    raw["train"] = train_section
    return raw


def student_task(session: Session, template: str | None, verbalizer: dict | None) -> dict:
    """The teacher's classification task, with the student's template and label words where
    given (the labels themselves, and their order, stay the teacher's)."""
    task = session.classification_config.model_dump(mode="json")
    for key in ("type", "data", "max_examples", "dev_fraction", "test_fraction", "split_seed"):
        task.pop(key, None)
    if template is not None:
        task["template"] = template
    if verbalizer is not None:
        words = dict(verbalizer)
        if set(words) != set(task["verbalizer"]):
            raise UsageError(
                f"--verbalizer has the labels {sorted(words)} but the prompt's task has "
                f"{sorted(task['verbalizer'])}; give a word for each of the prompt's labels"
            )
        task["verbalizer"] = {label: words[label] for label in task["verbalizer"]}
    return task


def train_student(raw: dict, run_dir: Path, target: Backbone, resume: bool, progress: bool):
    """The run's config validated and trained (or resumed) in the run folder."""
    from softprompt.config import validate_config

    config = validate_config(raw, source="migration config")
    return train(config, run_dir, resume=resume, progress=progress, backbones=[target])


def labelled_report(pair: Pair, run_dir: Path, raw: dict, best) -> dict | None:
    """With labels in the data (never used to train): the teacher's and the student's accuracy
    on the held-out inputs and on all of them."""
    spec = DataSpec(
        source=str(run_dir / INPUTS),
        label_field="label",
        text_b_field="text_b" if raw["task"].get("text_b_field") else None,
        dev_fraction=raw["task"]["dev_fraction"],
        test_fraction=0.0,
        split_seed=raw["task"]["split_seed"],
    )
    try:
        splits = {"held_out": load_split(spec, "dev"), "all": _all(spec)}
    except SoftpromptError:
        return None  # no labels (or no held-out inputs): nothing to report
    student = Session(best, pair.target)
    report = {}
    for name, examples in splits.items():
        gold = [e.label for e in examples]
        texts = [e.text for e in examples]
        b = [e.text_b for e in examples] if spec.text_b_field else None
        taught = [r["label"] for r in pair.session.predict(texts, b)]
        learned = [r["label"] for r in student.predict(texts, b)]
        report[name] = {
            "inputs": len(gold),
            "teacher_accuracy": _share(taught, gold),
            "student_accuracy": _share(learned, gold),
            "agreement": _share(learned, taught),
        }
    return report


def _all(spec: DataSpec) -> list[Example]:
    return load_split(spec, "train") + load_split(spec, "dev")


def _share(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b)) / max(len(b), 1)


def finish(best_path: Path, out: Path, provenance: dict) -> object:
    """The best student with its provenance in the header, written to `out` atomically."""
    best = open_artifact(best_path)
    best.training = {**best.training, "migration": provenance}
    best.save(out)
    return best
