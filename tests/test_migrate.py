"""`softprompt migrate` on tiny random models: a prompt and a prefix moved to a model with
another tokenizer and hidden size, the distillation task's objective, exact resume, `train`
from the run's config, and the bad inputs (one line each, nothing written)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import corpus, write_jsonl
from softprompt import cli
from softprompt.config import load_config, validate_config
from softprompt.errors import ConfigError, DataError, ModelError, UsageError
from softprompt.files import read_safetensors
from softprompt.methods import load_artifact
from softprompt.migration import migrate
from softprompt.models import load_backbone
from softprompt.models.tiny import save_tiny
from softprompt.session import Session
from softprompt.tasks.distill import DistillTask, Teacher, distill_target, input_key
from softprompt.training.trainer import Trainer, train

TASK = {
    "template": "{text} it was",
    "verbalizer": {"negative": " bad", "positive": " good"},
}


@pytest.fixture(autouse=True)
def _cache(request, tmp_path, monkeypatch):
    """Alignment maps of the tiny models in a fresh cache; the bundled models' test keeps the
    user cache, where their converted weights are (converting them again costs minutes)."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_dirs) -> dict[str, Path]:
    """The source (tiny llama, hidden 32) and a target with another tokenizer (two words
    more, so every id after them moves) and hidden size 48 (tiny gpt2)."""
    root = tmp_path_factory.mktemp("migrate-models")
    other = save_tiny(root / "gpt2-48", [*corpus(), "aardvark abacus"], "gpt2", hidden=48)
    return {"source": tiny_dirs["llama"], "target": other, "gemma3": tiny_dirs["gemma3"]}


def _source(root: Path, model: Path, data: Path, method: str = "prompt") -> Path:
    prompt = {"length": 3, "init": "vocab"} if method == "prompt" else {"length": 3}
    config = validate_config(
        {
            "method": method,
            "models": [str(model)],
            "task": {"data": str(data), "max_examples": 40, **TASK},
            "prompt": prompt,
            "train": {"steps": 2, "batch_size": 4, "lr": 0.1, "eval_every": 2},
        }
    )
    train(config, root, progress=False)
    return root / "prompt.safetensors"


@pytest.fixture(scope="module")
def source_prompt(tmp_path_factory, models, sentiment_data) -> Path:
    return _source(tmp_path_factory.mktemp("source"), models["source"], sentiment_data)


@pytest.fixture(scope="module")
def sentiment_data() -> Path:
    return Path(__file__).resolve().parents[1] / "examples" / "data" / "sentiment"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, sentiment_data) -> Path:
    """30 labelled inputs (the labels are only reported)."""
    lines = (sentiment_data / "train.jsonl").read_text().splitlines()[:30]
    path = tmp_path_factory.mktemp("inputs") / "inputs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_prompt_migrates_across_tokenizer_and_hidden_size(
    models, source_prompt, inputs, sentiment_data, tmp_path
):
    out = tmp_path / "new.safetensors"
    result = migrate(
        source_prompt,
        str(models["target"]),
        inputs,
        out=out,
        steps=3,
        batch_size=4,
        progress=False,
    )
    artifact = load_artifact(out)
    assert artifact.embedding.shape == (3, 48)
    assert artifact.task["type"] == "classification"
    assert artifact.task["verbalizer"] == TASK["verbalizer"]
    record = artifact.training["migration"]
    assert record["source_sha256"] == hashlib.sha256(source_prompt.read_bytes()).hexdigest()
    assert record["source_model"] == load_backbone(str(models["source"])).name
    assert record["inputs"] == 30 and record["data"] == str(inputs)
    assert record["student_start"]["start"] == "transfer map"
    assert 0.0 <= record["teacher_agreement"] <= 1.0
    assert result["labelled"]["all"]["inputs"] == 30
    # the migrated prompt is used like any other: evaluate reads its recorded task
    metrics = Session(out, str(models["target"])).evaluate(str(sentiment_data))
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_the_distill_loss_is_zero_for_the_teacher_itself_and_not_for_another_prompt(
    models, source_prompt, tmp_path, sentiment_data
):
    """Student = teacher (the source model with the source prompt): both terms vanish; the
    bare model or another prompt is penalised."""
    from softprompt.data import Example
    from softprompt.migration.classify import teacher_distributions

    session = Session(source_prompt, str(models["source"]))
    examples = [Example(text=t) for t in ("the food was great", "awful service", "it was ok")]
    log_p, log_p0 = teacher_distributions(session, examples)
    keys = [input_key(e.text) for e in examples]
    Teacher(keys, ["negative", "positive"], log_p, log_p0, {}).save(tmp_path / "t.safetensors")
    settings = load_config(
        {
            "task": {
                "type": "distill",
                "data": "x",
                "teacher": str(tmp_path / "t.safetensors"),
                **TASK,
            }
        }
    ).task
    task = DistillTask.from_config(settings, session.backbone, 3)
    items = task.encode_split(examples)
    assert float(task.loss(session.steering, items)) == pytest.approx(0.0, abs=1e-5)
    other = torch.randn_like(load_artifact(source_prompt).embedding) * 3
    assert float(task.loss(other, items)) > 1e-3
    # the shift term alone: prompted-minus-bare of the student against the teacher's
    task.shift_weight = 1.0
    assert float(task.loss(session.steering, items)) == pytest.approx(0.0, abs=1e-5)


def test_the_ensemble_target_is_the_normalised_geometric_mean():
    """Hand-computed: p = (0.9, 0.1), q0 = (0.2, 0.8); with b = 1/2 the geometric means are
    0.3·√2 and 0.2·√2, so the target is (0.6, 0.4); b = 0 is the teacher, b = 1 the own
    zero-shot; the teacher's bare distribution p0 plays no part."""
    log_p = torch.tensor([[0.9, 0.1]]).log()
    log_p0 = torch.tensor([[0.5, 0.5]]).log()
    log_q0 = torch.tensor([[0.2, 0.8]]).log()
    half = distill_target("ensemble", log_p, log_p0, log_q0, 0.5).exp()
    assert torch.allclose(half, torch.tensor([[0.6, 0.4]]), atol=1e-6)
    assert torch.allclose(distill_target("ensemble", log_p, log_p0, log_q0, 0.0), log_p)
    assert torch.allclose(distill_target("ensemble", log_p, log_p0, log_q0, 1.0), log_q0)
    other_p0 = torch.tensor([[0.1, 0.9]]).log()
    assert torch.allclose(distill_target("ensemble", log_p, other_p0, log_q0, 0.5).exp(), half)
    # `shifted`: q0 · p / p0 renormalised = (0.2·0.9/0.5, 0.8·0.1/0.5) ∝ (0.36, 0.16)
    shifted = distill_target("shifted", log_p, log_p0, log_q0).exp()
    assert torch.allclose(shifted, torch.tensor([[0.36, 0.16]]) / 0.52, atol=1e-6)


def test_the_ensemble_objective_pulls_toward_the_own_zero_shot(models, source_prompt, tmp_path):
    """With own_weight = 1 the ensemble target is the student model's bare distribution: the
    bare model has zero loss and the trained prompt does not; own_weight = 0 is the teacher."""
    from softprompt.data import Example
    from softprompt.migration.classify import teacher_distributions
    from softprompt.steering.base import NoSteering

    session = Session(source_prompt, str(models["source"]))
    examples = [Example(text=t) for t in ("the food was great", "awful service", "it was ok")]
    log_p, log_p0 = teacher_distributions(session, examples)
    keys = [input_key(e.text) for e in examples]
    Teacher(keys, ["negative", "positive"], log_p, log_p0, {}).save(tmp_path / "t.safetensors")
    losses = {}
    for own in (0.0, 1.0):
        task_keys = {"type": "distill", "data": "x", "teacher": str(tmp_path / "t.safetensors")}
        task_keys |= {"reference": "ensemble", "own_weight": own, "shift_weight": 0.0, **TASK}
        settings = load_config({"task": task_keys}).task
        task = DistillTask.from_config(settings, session.backbone, 3)
        items = task.encode_split(examples)
        losses[own] = (task.loss(NoSteering(), items), task.loss(session.steering, items))
    assert float(losses[1.0][0]) == pytest.approx(0.0, abs=1e-5)
    assert float(losses[1.0][1]) > 1e-4
    assert float(losses[0.0][1]) == pytest.approx(0.0, abs=1e-5)
    assert float(losses[0.0][0]) > 1e-4


def test_an_ensemble_migration_records_its_objective(models, source_prompt, inputs, tmp_path):
    out = tmp_path / "ens.safetensors"
    result = migrate(
        source_prompt,
        str(models["target"]),
        inputs,
        out=out,
        steps=2,
        batch_size=4,
        reference="ensemble",
        own_weight=0.3,
        shift_weight=0.0,
        progress=False,
    )
    objective = load_artifact(out).training["migration"]["objective"]
    assert objective["reference"] == "ensemble" and objective["own_weight"] == 0.3
    assert "ensemble" in result["objective"]["what"]
    config = load_config(Path(result["run_dir"]) / "config.yaml")
    assert config.task.reference == "ensemble" and config.task.own_weight == 0.3


def test_a_prefix_migrates_to_a_model_of_other_geometry(models, inputs, sentiment_data, tmp_path):
    source = _source(tmp_path / "src", models["source"], sentiment_data, method="prefix")
    out = tmp_path / "new.safetensors"
    migrate(source, str(models["gemma3"]), inputs, out=out, steps=2, progress=False)
    artifact = load_artifact(out)
    assert artifact.method == "prefix"
    assert artifact.training["migration"]["student_start"]["start"] == "method init"
    session = Session(out, str(models["gemma3"]))
    assert session.predict(["the food was great"])[0]["label"] in ("negative", "positive")


def _interrupt_at(monkeypatch, step: int) -> None:
    original = Trainer.train_step

    def train_step(self, state):
        if state.step == step:
            raise KeyboardInterrupt
        return original(self, state)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_resume_is_exact_and_train_runs_the_run_config(
    models, source_prompt, inputs, tmp_path, monkeypatch
):
    args = (source_prompt, str(models["target"]), inputs)
    whole = migrate(*args, out=tmp_path / "a.safetensors", steps=4, batch_size=4, progress=False)
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        migrate(*args, out=tmp_path / "b.safetensors", steps=4, batch_size=4, progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "b.safetensors").exists()
    migrate(*args, out=tmp_path / "b.safetensors", steps=4, resume=True, progress=False)
    a, _ = read_safetensors(tmp_path / "a.safetensors")
    b, _ = read_safetensors(tmp_path / "b.safetensors")
    assert torch.equal(a["prompt"], b["prompt"])
    # `train` runs the distillation from the run's config alone, to the same prompt
    config = load_config(Path(whole["run_dir"]) / "config.yaml")
    assert config.task.type == "distill"
    train(config, tmp_path / "again", progress=False)
    c, _ = read_safetensors(tmp_path / "again" / "prompt.safetensors")
    assert torch.equal(a["prompt"], c["prompt"])


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"source": "/nonexistent/model"}, ModelError, "source model"),
        ({"to": "SOURCE"}, UsageError, "already runs on"),
        ({"data": "blank"}, DataError, "no texts"),
        ({"verbalizer": {"negative": " zzqx", "positive": " good"}}, ConfigError, "zzqx"),
        ({"reference": "ensemble", "own_weight": 1.5}, UsageError, "own-weight"),
        ({"reference": "mean"}, UsageError, "ensemble"),
    ],
)
def test_bad_inputs_fail_in_one_line_and_write_nothing(
    models, source_prompt, inputs, tmp_path, change, error, words
):
    change = dict(change)
    to = change.pop("to", str(models["target"]))
    to = str(models["source"]) if to == "SOURCE" else to
    data = inputs
    if change.pop("data", None):
        data = write_jsonl(tmp_path / "blank.jsonl", [{"text": "   "}, {"text": ""}])
    out = tmp_path / "out" / "new.safetensors"
    out.parent.mkdir()
    with pytest.raises(error, match=words) as caught:
        migrate(source_prompt, to, data, out=out, steps=2, progress=False, **change)
    assert "\n" not in str(caught.value)
    assert list(out.parent.iterdir()) == []


def test_the_command_prints_json_and_refuses_a_missing_to(
    models, source_prompt, inputs, tmp_path, monkeypatch, capsys
):
    def invoke(*args):
        monkeypatch.setattr("sys.argv", ["softprompt", *map(str, args)])
        try:
            cli.main()
        except SystemExit as exc:
            return exc.code, capsys.readouterr()
        return 0, capsys.readouterr()

    code, captured = invoke("migrate", source_prompt, "--data", inputs)
    assert code == 2 and "--to" in captured.err
    out = tmp_path / "cli.safetensors"
    code, captured = invoke(
        "migrate",
        source_prompt,
        "--to",
        models["target"],
        "--data",
        inputs,
        "--out",
        out,
        "--steps",
        2,
        "--shift-weight",
        0,
        "--json",
    )
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["objective"]["what"] == "plain KL" and Path(result["path"]) == out
    assert out.is_file()


def test_a_distill_config_without_its_teacher_file_is_refused(models, tmp_path):
    config = load_config(
        {
            "models": [str(models["target"])],
            "task": {
                "type": "distill",
                "data": "x",
                "teacher": str(tmp_path / "t.safetensors"),
                **TASK,
            },
        }
    )
    with pytest.raises(UsageError, match="teacher file not found"):
        DistillTask.from_config(config.task, load_backbone(str(models["target"])), 3)


@pytest.fixture(scope="module")
def lm_prompt(tmp_path_factory, models, sentiment_data) -> Path:
    """A prompt trained on the lm task (a generation artifact)."""
    root = tmp_path_factory.mktemp("lm-source")
    config = validate_config(
        {
            "models": [str(models["source"])],
            "task": {"type": "lm", "data": str(sentiment_data), "max_examples": 20},
            "prompt": {"length": 3, "init": "vocab"},
            "train": {"steps": 2, "batch_size": 4, "lr": 0.1, "eval_every": 2},
        }
    )
    train(config, root, progress=False)
    return root / "prompt.safetensors"


@pytest.mark.parametrize(
    ("target", "level"), [("target", "sequence"), ("gemma3", "token (teacher's top-20)")]
)
def test_a_generation_prompt_migrates_by_its_teachers_continuations(
    models, lm_prompt, inputs, sentiment_data, tmp_path, target, level
):
    """Other tokenizer: the student learns the teacher's continuations (sequence level); the
    same tokenizer (tiny llama -> tiny gemma3): the teacher's top-k at every token."""
    out = tmp_path / "new.safetensors"
    result = migrate(
        lm_prompt,
        str(models[target]),
        inputs,
        out=out,
        steps=2,
        max_new_tokens=6,
        progress=False,
    )
    start = result["student_start"]
    assert start["distillation"]["level"] == level
    assert start["distillation"]["starts"] > 10
    lines = (Path(result["run_dir"]) / "inputs.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    assert record["continuation"].strip() and len(record["text"].split()) <= 4
    artifact = load_artifact(out)
    assert artifact.task["type"] == "lm"
    session = Session(out, str(models[target]))
    assert session.evaluate(str(sentiment_data), task="lm")["perplexity"] > 1.0
    # the teacher wrote the same continuations again: seeded
    again = migrate(
        lm_prompt,
        str(models[target]),
        inputs,
        out=tmp_path / "again.safetensors",
        steps=1,
        max_new_tokens=6,
        progress=False,
    )
    assert (Path(again["run_dir"]) / "inputs.jsonl").read_text().splitlines() == lines


@pytest.mark.slow
def test_a_smollm2_prompt_migrates_to_gemma3(tmp_path, sentiment_data):
    """The bundled models (other tokenizer, hidden 576 -> 640): a short migration writes a
    Gemma prompt that starts from the transfer map and predicts there."""
    from softprompt.methods.artifact import model_record
    from softprompt.methods.prompt import SoftPrompt, init_embedding

    smollm2 = load_backbone("smollm2-135m")
    task = {
        "type": "classification",
        "data": str(sentiment_data),
        "template": "{text}\nLabel:",
        "verbalizer": {"negative": " negative", "positive": " positive"},
    }
    source = SoftPrompt(
        init_embedding(4, smollm2, "vocab"), models=[model_record(smollm2)], task=task
    ).save(tmp_path / "smollm2.safetensors")
    lines = (sentiment_data / "train.jsonl").read_text().splitlines()[:8]
    data = tmp_path / "inputs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "gemma.safetensors"
    result = migrate(
        source,
        "gemma3-270m",
        data,
        out=out,
        source=smollm2,
        steps=2,
        batch_size=4,
        dev_fraction=0.25,
        progress=False,
    )
    assert result["student_start"]["start"] == "transfer map"
    artifact = load_artifact(out)
    assert artifact.embedding.shape == (4, 640)
    assert artifact.training["migration"]["source_model"] == smollm2.name
    label = Session(out, "gemma3-270m").predict(["Loved every minute."])[0]["label"]
    assert label in ("negative", "positive")


def test_a_joint_prompt_migrates_to_several_models_one_student_each(
    models, tiny_dirs, inputs, sentiment_data, tmp_path
):
    """A prompt trained jointly on two models (its teacher: its first model) goes to two new
    models at once, a causal one with another tokenizer and a masked LM: one student each."""
    config = validate_config(
        {
            "models": [str(models["source"]), str(models["gemma3"])],
            "task": {"data": str(sentiment_data), "max_examples": 20, **TASK},
            "prompt": {"length": 3, "init": "vocab"},
            "train": {"steps": 1, "batch_size": 4, "lr": 0.1, "eval_every": 1},
        }
    )
    train(config, tmp_path / "joint", progress=False)
    targets = [str(models["target"]), str(tiny_dirs["bert"])]
    result = migrate(
        tmp_path / "joint" / "prompt.safetensors",
        targets,
        inputs,
        out=tmp_path / "new",
        steps=1,
        progress=False,
    )
    runs = result["migrations"]
    assert [r["target"] for r in runs] == [load_backbone(t).name for t in targets]
    assert all(r["source_model"] == load_backbone(str(models["source"])).name for r in runs)
    assert sorted(p.name for p in (tmp_path / "new").glob("*.safetensors")) == sorted(
        Path(r["path"]).name for r in runs
    )
    assert load_artifact(runs[1]["path"]).embedding.shape[1] == 32  # the BERT student


def test_too_few_texts_to_hold_some_out_are_refused(models, source_prompt, tmp_path):
    data = write_jsonl(tmp_path / "two.jsonl", [{"text": "great food"}, {"text": "awful"}])
    with pytest.raises(DataError, match="too few"):
        migrate(source_prompt, str(models["target"]), data, out=tmp_path / "n.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.jsonl"]


def test_the_teacher_continues_the_starts_the_suffix_rate_is_measured_on():
    """A generation migration's starts follow the suffix rate's rule, also in a language
    written without spaces: each long enough sentence's first characters, not the document."""
    from softprompt.data import Example
    from softprompt.migration.generate import starts
    from softprompt.tasks.suffix import START_CHARACTERS

    first, second = (
        "今朝は久しぶりに早起きをして散歩に出かけた。",
        "空気がひんやりしていて、とても気持ちがよかった。",
    )
    english = "I woke up early today and went out. It was cold."
    found = starts([Example(first + second), Example(english), Example("短い。")])
    assert found == [
        first[:START_CHARACTERS],
        second[:START_CHARACTERS],
        "I woke up early",
        "短い。",  # no sentence long enough: the input itself
    ]
