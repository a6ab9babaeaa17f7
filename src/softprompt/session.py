"""The use side's one object: a prompt (or nothing) opened on a model once.

A `Session` opens what the user names (`softprompt.artifacts.open_artifact`: a `.safetensors`
artifact, a PEFT folder, a run folder, a research `.pt` file, or nothing = the bare model),
resolves the model (the one given, else the prompt's own), checks that the prompt fits it,
and builds the steering and the classification task once; `predict`, `evaluate` and
`generate` then run on what it holds. The CLI's evaluate/predict/generate, the batch files,
the Python API and every adapter of `softprompt serve` hold one.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch

from softprompt.artifacts import ArtifactSource, open_artifact, source_name
from softprompt.data import Example, canonical_split, load_split
from softprompt.errors import UsageError
from softprompt.evaluation import model_for, prediction_rows, resolve_task
from softprompt.generation import SamplingOptions, generate_samples
from softprompt.methods.base import Artifact
from softprompt.models import Backbone, loading
from softprompt.steering.base import NoSteering, Steering
from softprompt.tasks import build_task, data_spec
from softprompt.tasks.base import Task, TaskSettings
from softprompt.tasks.classification import classification_scores
from softprompt.tasks.questions import document_steering, read_questions, score_questions
from softprompt.text.corpus import read_corpus


class Session:
    """A prompt or prefix (or nothing) on one model, with its task. The model is loaded, and
    the fit checked, on first use, so that an input file can be read and checked first.

    `config`, `template` and `verbalizer` override the task the artifact records, in that
    order (see `evaluation.resolve_task`); `model` is a spec or a loaded `Backbone`."""

    def __init__(
        self,
        prompt: ArtifactSource = None,
        model: str | Backbone | None = None,
        *,
        config: str | Path | None = None,
        template: str | None = None,
        verbalizer: dict[str, str] | None = None,
        dtype: str = "float32",
        device: str | torch.device | None = None,
        device_map: str | None = None,
        max_memory: dict | None = None,
    ) -> None:
        self.artifact: Artifact | None = open_artifact(prompt)
        self.source = source_name(prompt)
        self.model = model_for(self.artifact, model)
        self.overrides = {"config": config, "template": template, "verbalizer": verbalizer}
        self.dtype, self.device = dtype, device
        # device_map="auto": the model spread over devices within max_memory (models.dispatch)
        self.placement = {"device_map": device_map, "max_memory": max_memory}

    def on(self, model: str | Backbone) -> Session:
        """The same prompt and task overrides on another model (the artifact is not re-read)."""
        other = Session(
            self.artifact, model, dtype=self.dtype, device=self.device, **self.placement
        )
        other.source, other.overrides = self.source, self.overrides
        return other

    def load(self) -> Session:
        """Load the model and check the prompt fits it now (else on first use)."""
        _ = self.steering
        return self

    @cached_property
    def backbone(self) -> Backbone:
        if isinstance(self.model, Backbone):
            return self.model
        return loading.load_backbone(
            self.model, dtype=self.dtype, device=self.device or "cpu", **self.placement
        )

    @cached_property
    def steering(self) -> Steering:
        """What steers the model (checked to fit it); nothing for the bare model."""
        if self.artifact is None:
            return NoSteering()
        return self.artifact.steering_for(self.backbone, self.source)

    @property
    def trained_on_model(self) -> bool:
        names = [m.get("name") for m in self.artifact.models] if self.artifact else []
        return self.backbone.name in names

    def task_config(self, data: str | None = None, task_type: str | None = None) -> TaskSettings:
        """The task to run: the artifact's recorded task, the overrides, then `data`/`task_type`.
        A prompt that does not fit the model is reported before a missing verbalizer."""
        return resolve_task(
            self.artifact,
            data,
            config=self.overrides["config"],
            check_fit=lambda: self.steering,
            template=self.overrides["template"],
            verbalizer=self.overrides["verbalizer"],
            type=task_type,
        )

    @cached_property
    def classification_config(self) -> TaskSettings:
        """The classification task that `predict` and `predict_file` run."""
        config = self.task_config()
        if config.type != "classification":
            raise UsageError("predict needs a classification task (template and verbalizer)")
        return config

    @cached_property
    def classifier(self) -> Task:
        """The classification task built on the model (encodes texts, scores labels)."""
        return build_task(self.classification_config, self.backbone, self.steering.input_length)

    @torch.no_grad()
    def class_scores(self, encoded: list, batch_size: int = 32, on_batch=None) -> torch.Tensor:
        """Label scores [N, C] of encoded examples, in input order (see `classifier`)."""
        return classification_scores(self.classifier, self.steering, encoded, batch_size, on_batch)

    def predict(self, texts: list[str], text_b: list[str] | None = None) -> list[dict]:
        """The predicted label and every label's probability, for each text."""
        pairs = text_b or [None] * len(texts)
        encoded = [
            self.classifier.encode(Example(text=t, text_b=b, where="--text"), with_label=False)
            for t, b in zip(texts, pairs)
        ]
        rows = prediction_rows(self.classifier, self.class_scores(encoded))
        return [{"text": text, **row} for text, row in zip(texts, rows)]

    @torch.no_grad()
    def evaluate(
        self,
        data: str | None = None,
        *,
        split: str = "test",
        batch_size: int = 32,
        task: str | None = None,
        samples: int = 40,
    ) -> dict:
        """The task's metrics on a data split (an alias such as validation = dev); for the
        suffix task, the suffix rate of sampled continuations with and without the prefix."""
        config = self.task_config(data, task)
        if not config.data:
            raise UsageError("no data given: pass --data (a folder, a file or hf:NAME)")
        split = canonical_split(split)
        examples = load_split(data_spec(config), split)
        built = build_task(config, self.backbone, self.steering.input_length)
        metrics = built.report(self.steering, examples, batch_size=batch_size, samples=samples)
        return {
            "model": self.backbone.name,
            "prompt": self.source if self.artifact is not None else None,
            "trained_on_model": self.trained_on_model,
            "split": split,
            "data": config.data,
            **metrics,
        }

    def answer_questions(
        self, questions: str | Path, document: str | Path | None = None, batch_size: int = 16
    ) -> list[dict]:
        """Question accuracy and reference-answer log-likelihood (softprompt.tasks.questions)
        with the prompt (a cartridge, say); with `document`, beside the bare model, the
        document truncated to the prompt's length, and the whole document, both in context."""
        asked = read_questions(questions)
        rows = [("prompt", self.steering)] if self.artifact is not None else []
        rows.append(("nothing", NoSteering()))
        if document is not None:
            text = "\n\n".join(doc.text for doc in read_corpus(str(document)))
            if self.artifact is not None:
                size = self.steering.length
                rows.append(
                    (f"document truncated to {size}", document_steering(self.backbone, text, size))
                )
            rows.append(("whole document", document_steering(self.backbone, text)))
        results = []
        for name, steering in rows:
            scores = score_questions(self.backbone, steering, asked, batch_size)
            results.append({"condition": name, "length": steering.length, **scores})
        return results

    def generate(
        self,
        texts: list[str],
        options: SamplingOptions | None = None,
        *,
        num_samples: int = 1,
        compare: bool = False,
    ) -> list[dict[str, str]]:
        """Each text continued as given (see `generation.generate_samples`)."""
        steer = self.steering if self.artifact is not None else None
        return generate_samples(
            self.backbone, texts, steer, options, num_samples=num_samples, compare=compare
        )


def evaluate(
    prompt: ArtifactSource,
    model: str | Backbone | None = None,
    data: str | None = None,
    *,
    split: str = "test",
    config: str | Path | None = None,
    template: str | None = None,
    verbalizer: dict[str, str] | None = None,
    batch_size: int = 32,
    dtype: str = "float32",
    task: str | None = None,
    samples: int = 40,
) -> dict:
    """Metrics of a prompt or prefix (or, with `prompt=None`, the bare model zero-shot) on a
    data split: `Session(prompt, model, ...).evaluate(data, ...)`. The model defaults to the
    prompt's own, the task to the artifact's metadata."""
    session = Session(
        prompt, model, config=config, template=template, verbalizer=verbalizer, dtype=dtype
    )
    return session.evaluate(data, split=split, batch_size=batch_size, task=task, samples=samples)


def predict(
    prompt: ArtifactSource,
    texts: list[str],
    model: str | Backbone | None = None,
    *,
    config: str | Path | None = None,
    template: str | None = None,
    verbalizer: dict[str, str] | None = None,
    text_b: list[str] | None = None,
    dtype: str = "float32",
) -> list[dict]:
    """The predicted label and the probability of every label, for each text:
    `Session(prompt, model, ...).predict(texts)`; the model defaults to the prompt's own."""
    session = Session(
        prompt, model, config=config, template=template, verbalizer=verbalizer, dtype=dtype
    )
    return session.predict(texts, text_b)
