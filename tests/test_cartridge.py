"""Cartridges: the method (init from text, frozen positions), self-study (top-k distillation,
the teacher turns kept in the run folder, exact resume), composition, and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from conftest import corpus, interrupt_at
from softprompt.artifacts import open_artifact
from softprompt.config import validate_config
from softprompt.errors import ConfigError, DataError, PromptFileError
from softprompt.methods import get_method, load_artifact
from softprompt.methods.prefix import SavedPrefix
from softprompt.steering.prefix import PrefixKV
from softprompt.tasks.self_study import SelfStudyTask, topk_kl
from softprompt.training.trainer import Trainer


@pytest.fixture()
def document(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(" ".join(corpus()[:30]), encoding="utf-8")
    return path


def cartridge_config(document, steps=4, **prompt):
    return validate_config(
        {
            "models": ["tiny"],
            "method": "cartridge",
            "task": {
                "type": "self_study",
                "data": str(document),
                "chunk_tokens": 48,
                "conversations": 2,
                "dev_conversations": 2,
                "max_new_tokens": 6,
                "generation_batch": 8,
                "top_k": 5,
            },
            "prompt": {"length": 6, "frozen": 2, **prompt},
            "train": {
                "steps": steps,
                "batch_size": 2,
                "lr": 0.05,
                "eval_every": 2,
                "checkpoint_every": 2,
                "seed": 3,
            },
        }
    )


def own_kv(model, ids):
    """The model's cache for `ids`, read straight from a forward pass."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    keys = torch.stack([layer.keys[0] for layer in cache.layers])
    values = torch.stack([layer.values[0] for layer in cache.layers])
    return keys, values


def test_a_cartridge_starts_as_the_models_own_keys_and_values_of_the_documents_first_tokens(
    tiny, document
):
    backbone = tiny["llama"]
    config = cartridge_config(document)
    assert config.prompt.document == str(document)  # taken from the task
    module = get_method("cartridge").build_module(config.prompt, [backbone], None)
    ids = backbone.tokenizer(document.read_text(), return_tensors="pt").input_ids[:, :6]
    keys, values = own_kv(backbone.model, ids)
    kv = module()
    assert kv.keys.shape[2] == 6
    assert torch.allclose(kv.keys, keys, atol=1e-6) and torch.allclose(kv.values, values, atol=1e-6)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable == 2 * keys[:, :, 2:].numel()  # the first 2 positions are not parameters


def test_random_init_is_the_kv_of_seeded_vocabulary_tokens(tiny, document):
    backbone = tiny["llama"]
    config = cartridge_config(document, init="random", seed=5)
    first = get_method("cartridge").build_module(config.prompt, [backbone], None)()
    again = get_method("cartridge").build_module(config.prompt, [backbone], None)()
    text = get_method("cartridge").build_module(cartridge_config(document).prompt, [backbone], None)
    assert torch.equal(first.keys, again.keys)
    assert not torch.allclose(first.keys, text().keys)


def test_topk_kl_against_a_hand_computed_divergence():
    student = torch.log_softmax(torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0]]), -1)
    teacher = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -3.0], [0.0, 0.0, 3.0, 1.0]]), -1)
    top = teacher.topk(2, dim=-1)
    expected = 0.0
    for row in range(2):
        t = [math.exp(v) for v in [2.0, 1.0, 0.0, -3.0]] if row == 0 else None
        t = t or [math.exp(v) for v in [0.0, 0.0, 3.0, 1.0]]
        s = [1.0, 0.0, -1.0, 0.5] if row == 0 else [0.0, 2.0, 0.0, 0.0]
        zs = sum(math.exp(v) for v in s)
        p = [v / sum(t) for v in t]
        q = [math.exp(v) / zs for v in s]
        for j in sorted(range(4), key=lambda j: -p[j])[:2]:
            expected += p[j] * math.log(p[j] / q[j])
    assert float(topk_kl(student, top.indices, top.values)) == pytest.approx(expected, rel=1e-5)
    same = topk_kl(teacher, top.indices, top.values)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_training_moves_only_the_unfrozen_positions_and_keeps_the_teacher_turns(
    tiny, document, tmp_path, capsys
):
    backbone = tiny["llama"]
    config = cartridge_config(document)
    start = get_method("cartridge").build_module(config.prompt, [backbone], None)()
    summary = Trainer(config, tmp_path, backbones=[backbone], progress=False).run()
    trained = load_artifact(tmp_path / "last.safetensors")
    assert trained.method == "cartridge" and isinstance(trained, SavedPrefix)
    assert torch.equal(trained.kv.keys[:, :, :2], start.keys[:, :, :2])
    assert torch.equal(trained.kv.values[:, :, :2], start.values[:, :, :2])
    assert not torch.allclose(trained.kv.keys[:, :, 2:], start.keys[:, :, 2:])
    assert (tmp_path / "self_study" / "train.safetensors").is_file()
    assert summary["dev"]["mean"]["loss"] >= 0.0
    assert "self-study" not in capsys.readouterr().err  # progress=False: no progress lines


def test_teacher_turns_are_reused_and_resume_is_bitwise(tiny, document, tmp_path, monkeypatch):
    backbone = tiny["llama"]
    config = cartridge_config(document, steps=4)
    Trainer(config, tmp_path / "straight", backbones=[backbone], progress=False).run()
    trainer = Trainer(config, tmp_path / "broken", backbones=[backbone], progress=False)
    interrupt_at(trainer, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran again on resume")

    monkeypatch.setattr(SelfStudyTask, "synthesize", no_teacher)
    resumed = Trainer(config, tmp_path / "broken", backbones=[backbone], progress=False)
    resumed.run(resume=True)
    a = load_artifact(tmp_path / "straight" / "last.safetensors").kv
    b = load_artifact(tmp_path / "broken" / "last.safetensors").kv
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_an_empty_document_is_refused_in_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ", encoding="utf-8")
    from softprompt.training.cartridge import train_cartridge

    with pytest.raises(DataError, match="holds no text"):
        train_cartridge([empty], tmp_path / "c.safetensors", model="tiny-unused", steps=1)


def test_a_document_shorter_than_the_cartridge_is_refused(tiny, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("good bad", encoding="utf-8")
    config = cartridge_config(short)
    with pytest.raises(ConfigError, match="fewer than the cartridge's 6 positions"):
        get_method("cartridge").build_module(config.prompt, [tiny["llama"]], None)


def saved(kv_length, layers=2, heads=2, dim=8, seed=0, models=None):
    torch.manual_seed(seed)
    shape = (layers, heads, kv_length, dim)
    return SavedPrefix(
        PrefixKV(torch.randn(shape), torch.randn(shape)), models=models or [], method="cartridge"
    )


def test_composition_concatenates_positions_and_refuses_a_sum_over_the_context(tiny, tmp_path):
    backbone = tiny["llama"]
    geometry = backbone.model.config
    layers, heads = geometry.num_hidden_layers, geometry.num_key_value_heads
    dim = geometry.hidden_size // geometry.num_attention_heads
    a, b = saved(3, layers, heads, dim, 1), saved(5, layers, heads, dim, 2)
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    both = open_artifact(f"{tmp_path / 'a.safetensors'}+{tmp_path / 'b.safetensors'}")
    assert both.length == 8
    assert torch.equal(both.kv.keys[:, :, :3], a.kv.keys)
    assert torch.equal(both.kv.values[:, :, 3:], b.kv.values)
    both.steering_for(backbone, "a+b")  # fits
    big = saved(200, layers, heads, dim, 3)
    big.save(tmp_path / "big.safetensors")
    name = f"{tmp_path / 'big.safetensors'}+{tmp_path / 'a.safetensors'}+" * 1
    over = open_artifact(name + str(tmp_path / "big.safetensors"))
    with pytest.raises(PromptFileError, match="403 positions long, but model .* at most 256"):
        over.steering_for(backbone, "big+a+big")


def test_a_cartridge_for_another_model_is_refused(tiny, document, tmp_path):
    config = cartridge_config(document, steps=2)
    Trainer(config, tmp_path, backbones=[tiny["llama"]], progress=False).run()
    cartridge = load_artifact(tmp_path / "last.safetensors")
    with pytest.raises(PromptFileError, match="use a prefix trained for this model"):
        cartridge.steering_for(tiny["gpt2"], "c.safetensors")


def trained_cartridge(tiny, document, folder):
    Trainer(
        cartridge_config(document, steps=2), folder, backbones=[tiny["llama"]], progress=False
    ).run()
    return folder / "last.safetensors"


def test_exported_cartridge_loads_in_peft_and_generates_the_same_text(
    tiny, tiny_dirs, document, tmp_path
):
    from peft import PeftModel

    from softprompt.interop.peft import export_peft
    from test_peft_interop import TEXTS, assert_same_generation, load_model

    path = trained_cartridge(tiny, document, tmp_path / "run")
    adapter = export_peft(path, tiny["llama"], tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(load_model(tiny_dirs["llama"]), adapter)
    config = peft_model.active_peft_config
    assert config.peft_type == "CARTRIDGE" and config.num_frozen_tokens == 2
    assert config.num_virtual_tokens == 6
    assert_same_generation(tiny["llama"], load_artifact(path), peft_model, TEXTS, batched=True)


def test_peft_made_cartridges_import_and_compose_like_peft(tiny, tiny_dirs, tmp_path):
    from peft import CartridgeConfig, PeftModel, get_peft_model
    from peft.tuners.cartridge.utils import (
        compose_cartridge_adapters,
        initialize_kv_prefix_from_text,
    )

    from softprompt.interop.peft import import_peft
    from test_peft_interop import TEXTS, assert_same_generation, load_model

    backbone = tiny["llama"]
    for name, text, length in (("a", "good bad great", 3), ("b", "it was awful .", 4)):
        config = CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=length)
        made = get_peft_model(load_model(tiny_dirs["llama"]), config)
        initialize_kv_prefix_from_text(made, backbone.tokenizer, text=text, use_chat_template=False)
        made.save_pretrained(tmp_path / name)
        imported = import_peft(tmp_path / name, tmp_path / f"{name}.safetensors", [backbone])
        assert imported.method == "cartridge" and imported.init["frozen"] == 1
        assert_same_generation(backbone, imported, made.eval(), TEXTS, batched=True)
    compose_cartridge_adapters([tmp_path / "a", tmp_path / "b"], output_path=tmp_path / "ab")
    theirs = PeftModel.from_pretrained(load_model(tiny_dirs["llama"]), tmp_path / "ab")
    ours = open_artifact(f"{tmp_path / 'a.safetensors'}+{tmp_path / 'b.safetensors'}")
    assert ours.length == 7
    assert_same_generation(backbone, ours, theirs, TEXTS, batched=True)


def test_served_compositions_answer_as_the_composed_prefix_and_misfits_get_one_line(
    tiny, tiny_dirs, tmp_path
):
    import httpx2

    from softprompt.generation import SamplingOptions, generate
    from softprompt.models import load_backbone
    from softprompt.serving.server import Server

    backbone = load_backbone(str(tiny_dirs["llama"]))
    config = backbone.model.config
    geometry = (config.num_hidden_layers, config.num_key_value_heads)
    dim = config.hidden_size // config.num_attention_heads
    folder = tmp_path / "adapters"
    folder.mkdir()
    for name, length, seed in (("doc-a", 3, 1), ("doc-b", 4, 2), ("big", 250, 3)):
        saved(length, *geometry, dim, seed).save(folder / f"{name}.safetensors")
    composed = open_artifact(f"{folder / 'doc-a.safetensors'}+{folder / 'doc-b.safetensors'}")
    expected = generate(
        backbone, ["it was good"], composed.kv, SamplingOptions(max_new_tokens=6, greedy=True)
    )[0]
    with Server(adapters_dir=folder, model=backbone, port=0, max_batch=4) as server:
        url = server.url + "/v1/completions"
        body = {"prompt": "it was good", "max_tokens": 6, "temperature": 0}
        reply = httpx2.post(url, json={**body, "model": "doc-a+doc-b"}, timeout=60)
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["text"] == expected
        over = httpx2.post(url, json={**body, "model": "doc-a+big+doc-b"}, timeout=60)
        error = over.json()["error"]
        assert over.status_code == 400 and error["code"] == "model_refused"
        assert "doc-a+big+doc-b is 257 positions long" in error["message"]
        assert "\n" not in error["message"]
        missing = httpx2.post(url, json={**body, "model": "doc-a+nope"}, timeout=60)
        assert missing.status_code == 404


def test_the_document_as_keys_values_scores_as_the_document_in_the_text(tiny):
    from softprompt.steering.base import NoSteering
    from softprompt.tasks.questions import document_steering
    from softprompt.tasks.self_study import continuation_logprobs

    backbone = tiny["llama"]
    text = " ".join(corpus()[:3])
    doc_ids = backbone.tokenizer(text).input_ids
    asked = backbone.tokenizer(" it was good", add_special_tokens=False).input_ids
    inside = continuation_logprobs(backbone, NoSteering(), [doc_ids + asked], [len(doc_ids) + 1])
    front = document_steering(backbone, text)
    assert front.length == len(doc_ids)
    ahead = continuation_logprobs(backbone, front, [asked], [1])
    torch.testing.assert_close(ahead[0], inside[0], atol=1e-4, rtol=0)


def test_cli_cartridge_then_evaluate_on_questions(
    monkeypatch, capsys, tiny_dirs, document, tmp_path
):
    import json

    from conftest import write_jsonl
    from test_cli import assert_one_line_error, invoke

    out = tmp_path / "c.safetensors"
    sets = [
        "task.chunk_tokens=48",
        "task.conversations=2",
        "task.dev_conversations=2",
        "task.max_new_tokens=6",
        "task.top_k=5",
    ]
    args = [
        "cartridge",
        document,
        "--out",
        out,
        "--length",
        6,
        "--steps",
        2,
        "--model",
        tiny_dirs["llama"],
        "--quiet",
        "--json",
    ]
    code, stdout, err = invoke(monkeypatch, capsys, *args, *[x for s in sets for x in ("--set", s)])
    assert code == 0, err
    assert json.loads(stdout)["cartridge"] == str(out)
    assert load_artifact(out).method == "cartridge" and load_artifact(out).length == 6
    questions = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {
                "question": "was it good",
                "options": ["good", "bad", "great"],
                "answer": 0,
                "reference": "it was good",
            },
            {"question": "was it bad", "options": ["awful", "good"], "answer": "B"},
        ],
    )
    generated = ["generate", f"{out}+{out}", "-t", "it was", "--greedy", "--max-new-tokens", 3]
    code, stdout, err = invoke(monkeypatch, capsys, *generated, "--json")
    assert code == 0, err  # a composition named with '+' (12 positions) generates
    assert json.loads(stdout)[0]["text"] == "it was"
    asked = ["evaluate", out, "--questions", questions, "--document"]
    code, _, err = invoke(monkeypatch, capsys, *asked, document)
    assert_one_line_error(code, err, 1, "the document is 560 tokens; with a question it does not")
    short = tmp_path / "short.txt"
    short.write_text(" ".join(corpus()[:3]), encoding="utf-8")
    code, stdout, err = invoke(monkeypatch, capsys, *asked, short, "--json")
    assert code == 0, err
    rows = json.loads(stdout)
    assert [r["condition"] for r in rows] == [
        "prompt",
        "nothing",
        "document truncated to 6",
        "whole document",
    ]
    assert [r["length"] for r in rows[:3]] == [6, 0, 6] and rows[3]["length"] > 6
    assert all(r["questions"] == 2 and r["accuracy"] in (0.0, 0.5, 1.0) for r in rows)
    assert all(r["answer_loglik"] < 0 for r in rows)
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [{"question": "x", "options": ["a", "b"], "answer": 5}]
    )
    code, _, err = invoke(monkeypatch, capsys, "evaluate", out, "--questions", bad)
    assert_one_line_error(code, err, 1, "bad.jsonl:1: 'answer' must be the right option's index")
