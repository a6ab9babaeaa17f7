"""The use side's one object: a Session opens every artifact form (a prompt file, a run folder,
a PEFT adapter folder, a research `.pt` file, nothing) and gives the same predictions for the
same prompt; the artifact is read and the task built once, however often it is used."""

from __future__ import annotations

import pytest
import torch

from conftest import write_jsonl
from softprompt import artifacts
from softprompt import session as session_module
from softprompt.batch_files import predict_file
from softprompt.interop.peft import export_peft
from softprompt.methods.artifact import model_record
from softprompt.methods.prompt import SoftPrompt, load_prompt
from softprompt.session import Session

TEMPLATE = "{text} it was"
VERBALIZER = {"negative": " bad", "positive": " good"}
TASK = {"type": "classification", "data": "", "template": TEMPLATE, "verbalizer": VERBALIZER}
TEXTS = ["it was good", "awful", "the review was great and positive"]


@pytest.fixture()
def prompt_file(tiny, tmp_path):
    backbone = tiny["llama"]
    embedding = torch.randn(4, backbone.hidden_size, generator=torch.Generator().manual_seed(2))
    run = tmp_path / "run"
    run.mkdir()
    SoftPrompt(embedding, models=[model_record(backbone)], task=TASK).save(
        run / "prompt.safetensors"
    )
    return run / "prompt.safetensors"


def test_every_artifact_form_gives_the_same_predictions(tiny, prompt_file, tmp_path):
    backbone = tiny["llama"]
    expected = Session(prompt_file, backbone).predict(TEXTS)
    peft_dir = export_peft(prompt_file, backbone, tmp_path / "peft")
    torch.save({"weight": load_prompt(prompt_file).embedding}, tmp_path / "esp.pt")
    forms = {
        "run folder": Session(prompt_file.parent, backbone),
        "PEFT folder": Session(peft_dir, backbone),
        "artifact in memory": Session(artifacts.open_artifact(prompt_file), backbone),
        "research .pt": Session(
            tmp_path / "esp.pt", backbone, template=TEMPLATE, verbalizer=VERBALIZER
        ),
    }
    for form, session in forms.items():
        got = session.predict(TEXTS)
        assert [r["label"] for r in got] == [r["label"] for r in expected], form
        for row, want in zip(got, expected):
            for label, p in want["probabilities"].items():
                assert row["probabilities"][label] == pytest.approx(p, abs=1e-5), form
    bare = Session(None, backbone, template=TEMPLATE, verbalizer=VERBALIZER).predict(TEXTS)
    assert bare[0]["probabilities"] != expected[0]["probabilities"]  # the prompt does steer


def test_a_session_reads_the_artifact_and_builds_the_task_once(
    tiny, prompt_file, tmp_path, monkeypatch
):
    calls = {"open": 0, "build": 0}
    real_load, real_build = artifacts.load_artifact, session_module.build_task

    def counted_load(path):
        calls["open"] += 1
        return real_load(path)

    def counted_build(*args, **kwargs):
        calls["build"] += 1
        return real_build(*args, **kwargs)

    monkeypatch.setattr(artifacts, "load_artifact", counted_load)
    monkeypatch.setattr(session_module, "build_task", counted_build)
    session = Session(prompt_file, tiny["llama"])
    for _ in range(3):
        session.predict(TEXTS)
    assert calls == {"open": 1, "build": 1}
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": t, "label": "positive"} for t in TEXTS])
    predict_file(prompt_file, source, tmp_path / "out.jsonl", model=tiny["llama"])
    assert calls == {"open": 2, "build": 2}  # predict --input: the artifact once, the task once


def test_a_session_loads_its_model_only_when_used(tiny, prompt_file, monkeypatch):
    loaded = []
    monkeypatch.setattr(
        "softprompt.models.loading.load_backbone",
        lambda *a, **k: loaded.append(a) or tiny["llama"],
    )
    session = Session(prompt_file)
    assert loaded == []  # opening reads the file, not the model
    assert session.model == model_record(tiny["llama"])["name"]  # the prompt's own model
    session.predict(TEXTS[:1])
    assert loaded == [(session.model,)]
