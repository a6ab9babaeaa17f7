"""PEFT adapters both ways, checked against the real PEFT library: an exported prompt or prefix
loads with `PeftModel.from_pretrained` and gives softprompt's logits and greedy text; an adapter
PEFT made imports into an artifact that does the same."""

import json
import os
import socket
import stat

import pytest
import torch
from peft import (
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)
from safetensors.torch import load_file, save_file

from reference import prompted_hidden
from softprompt.errors import ModelError, PromptFileError, UsageError
from softprompt.generation import SamplingOptions, generate
from softprompt.interop import peft as peft_interop
from softprompt.interop.peft import export_peft, import_peft
from softprompt.methods import load_artifact
from softprompt.methods.artifact import model_record
from softprompt.methods.prefix import SavedPrefix, save_prefix
from softprompt.methods.prompt import SoftPrompt, init_embedding, save_prompt
from softprompt.models import load_backbone
from softprompt.steering.prefix import PrefixKV, prefix_geometry, text_prefix
from test_cli import assert_one_line_error, invoke

TEXTS = ["it was good", "review : a great awful bad movie it was"]
TASK = {
    "type": "classification",
    "template": "review: {text} sentiment:",
    "verbalizer": {"negative": " bad", "positive": " good"},
}
PEFT_TYPES = {"prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING"}


@pytest.fixture()
def no_network(monkeypatch):
    """Any connection attempt fails the test: PEFT must find everything on disk."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def random_prompt(backbone, length: int = 4, seed: int = 0) -> SoftPrompt:
    generator = torch.Generator().manual_seed(seed)
    scale = backbone.input_embeddings.weight.std()
    embedding = torch.randn(length, backbone.hidden_size, generator=generator) * scale
    return SoftPrompt(embedding=embedding, models=[model_record(backbone)], task=dict(TASK))


def random_prefix(backbone, length: int = 3, seed: int = 0) -> SavedPrefix:
    generator = torch.Generator().manual_seed(seed)
    layers, heads, head_dim = prefix_geometry(backbone.model)
    shape = (layers, heads, length, head_dim)
    kv = PrefixKV(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
    return SavedPrefix(kv=kv, models=[model_record(backbone)], task=dict(TASK))


def load_model(model_dir):
    """A fresh copy of a model for PEFT to wrap (the session's backbones stay untouched)."""
    return load_backbone(str(model_dir)).model


def save_artifact(artifact, path):
    (save_prefix if isinstance(artifact, SavedPrefix) else save_prompt)(artifact, path)
    return path


def steer(artifact):
    """What softprompt's own code paths take: the [L, d] matrix or the key/value prefix."""
    return artifact.kv if isinstance(artifact, SavedPrefix) else artifact.embedding


def encode(backbone, texts, side: str = "right"):
    tokenizer = backbone.tokenizer
    previous, tokenizer.padding_side = tokenizer.padding_side, side
    try:
        return tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = previous


def assert_same_logits(backbone, artifact, peft_model, texts) -> None:
    """softprompt (prompted_hidden + LM head) and PEFT agree to 1e-4 at every real token, and
    the prompt does change the logits (so agreement is not trivial)."""
    enc = encode(backbone, texts)
    valid = enc.attention_mask.bool()
    with torch.no_grad():
        hidden, offset = prompted_hidden(
            backbone, steer(artifact), enc.input_ids, enc.attention_mask
        )
        mine = backbone.head_logits(hidden[:, offset:])
        theirs = peft_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        # prompt tuning returns the L virtual positions first; prefix tuning does not
        theirs = theirs[:, -enc.input_ids.shape[1] :].float()
        bare = backbone.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    assert mine.shape == theirs.shape
    torch.testing.assert_close(mine[valid], theirs[valid], atol=1e-4, rtol=0)
    assert (mine[valid] - bare[valid].float()).abs().max() > 1e-2


def peft_generate(backbone, peft_model, texts, new_tokens: int = 8) -> list[str]:
    enc = encode(backbone, texts, side="left")
    output = peft_model.generate(
        input_ids=enc.input_ids,
        attention_mask=enc.attention_mask,
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=backbone.tokenizer.pad_token_id,
    )
    # the continuation is the text after the prompt's in the whole text (as transformers'
    # text-generation pipeline cuts it): a word-level token keeps its space before it
    tokenizer, texts_out = backbone.tokenizer, []
    for ids, mask, new in zip(
        enc.input_ids, enc.attention_mask, output[:, enc.input_ids.shape[1] :]
    ):
        prompt = ids[mask.bool()].tolist()
        start = len(tokenizer.decode(prompt, skip_special_tokens=True))
        texts_out.append(tokenizer.decode(prompt + new.tolist(), skip_special_tokens=True)[start:])
    return texts_out


def assert_same_generation(backbone, artifact, peft_model, texts, *, batched: bool) -> None:
    """Greedy continuations (8 new tokens) of softprompt.generate and PeftModel.generate agree;
    `batched` runs the texts together, left-padded, else one at a time.

    Prompt tuning is compared one text at a time: PeftModel.generate drops the position ids for
    prompt tuning, so a left-padded row's positions count its pads and its text comes out
    differently than alone; softprompt.generate gives every row its unpadded result."""
    options = SamplingOptions(max_new_tokens=8, greedy=True)
    groups = [texts] if batched else [[text] for text in texts]
    produced = []
    for group in groups:
        mine = generate(backbone, group, steer(artifact), options)
        assert mine == peft_generate(backbone, peft_model, group)
        produced += mine
    assert any(text.strip() for text in produced)  # not only special tokens


MAKERS = {"prompt": random_prompt, "prefix": random_prefix}


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_exported_adapter_loads_in_peft_with_the_same_logits_and_generations(
    method, family, tiny, tiny_dirs, tmp_path, no_network
):
    backbone = tiny[family]
    artifact = MAKERS[method](backbone)
    path = save_artifact(artifact, tmp_path / "artifact.safetensors")
    adapter = export_peft(path, backbone, tmp_path / "adapter")
    assert sorted(p.name for p in adapter.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == PEFT_TYPES[method]
    assert config["base_model_name_or_path"] == str(tiny_dirs[family].resolve())
    peft_model = PeftModel.from_pretrained(load_model(tiny_dirs[family]), adapter)
    assert peft_model.active_peft_config.num_virtual_tokens == artifact.length
    assert_same_logits(backbone, artifact, peft_model, TEXTS)
    assert_same_generation(backbone, artifact, peft_model, TEXTS, batched=method == "prefix")


def test_exported_prefix_is_exactly_what_peft_puts_in_its_cache(tiny, tiny_dirs, tmp_path):
    backbone = tiny["llama"]  # grouped-query attention: 2 key-value heads for 4 query heads
    prefix = random_prefix(backbone, length=5)
    adapter = export_peft(
        save_artifact(prefix, tmp_path / "p.safetensors"), backbone, tmp_path / "a"
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["num_attention_heads"], config["token_dim"]) == (2, 16)
    peft_model = PeftModel.from_pretrained(load_model(tiny_dirs["llama"]), adapter)
    cache = peft_model.get_prompt(batch_size=1)
    assert len(cache.layers) == prefix.kv.keys.shape[0]
    for layer, keys, values in zip(cache.layers, prefix.kv.keys, prefix.kv.values):
        assert torch.equal(layer.keys[0], keys)
        assert torch.equal(layer.values[0], values)


PEFT_CONFIGS = {
    "prompt": lambda: PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5),
    "prefix": lambda: PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3),
    "prefix_projection": lambda: PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=3,
        prefix_projection=True,
        encoder_hidden_size=24,
    ),
}


def make_peft_adapter(model_dir, kind: str, folder, seed: int = 3):
    """A randomly initialised PEFT adapter saved by PEFT; returns the PEFT model (which runs
    its own encoder, the MLP for prefix_projection)."""
    torch.manual_seed(seed)
    made = get_peft_model(load_model(model_dir), PEFT_CONFIGS[kind]())
    if kind == "prefix_projection":  # PEFT's default init leaves a near-zero prefix: scale up
        with torch.no_grad():
            made.prompt_encoder["default"].transform[-1].weight.mul_(30)
    made.save_pretrained(folder)
    return made.eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", list(PEFT_CONFIGS))
def test_peft_made_adapter_imports_with_the_same_logits_and_generations(
    kind, family, tiny, tiny_dirs, tmp_path
):
    backbone = tiny[family]
    made = make_peft_adapter(tiny_dirs[family], kind, tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(load_model(tiny_dirs[family]), tmp_path / "adapter")
    imported = import_peft(tmp_path / "adapter", tmp_path / "imported.safetensors", [backbone])
    artifact = load_artifact(tmp_path / "imported.safetensors")
    assert artifact.method == ("prompt" if kind == "prompt" else "prefix")
    assert artifact.length == (5 if kind == "prompt" else 3)
    assert artifact.models == [model_record(backbone)]
    assert artifact.init["imported_from"] == "peft"
    written, returned = steer(artifact), steer(imported)
    if kind == "prompt":
        assert torch.equal(written, returned)
    else:
        assert torch.equal(written.keys, returned.keys)
        assert torch.equal(written.values, returned.values)
    for peft_model in (made, loaded):  # PEFT's own encoder run, and the saved adapter
        assert_same_logits(backbone, artifact, peft_model, TEXTS)
        assert_same_generation(backbone, artifact, peft_model, TEXTS, batched=kind != "prompt")


def test_import_without_a_model_names_the_adapters_base_model(tiny_dirs, tmp_path):
    make_peft_adapter(tiny_dirs["llama"], "prefix", tmp_path / "adapter")
    artifact = import_peft(tmp_path / "adapter", tmp_path / "x.safetensors")
    assert artifact.models == [{"name": str(tiny_dirs["llama"])}]
    assert load_artifact(tmp_path / "x.safetensors").models == artifact.models


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_export_then_import_gives_back_the_tensors_task_and_models(method, tiny, tmp_path):
    backbone = tiny["llama"]
    artifact = MAKERS[method](backbone, seed=7)
    path = save_artifact(artifact, tmp_path / "a.safetensors")
    export_peft(path, backbone, tmp_path / "adapter")
    back = import_peft(tmp_path / "adapter", tmp_path / "b.safetensors")
    reread = load_artifact(tmp_path / "b.safetensors")
    for loaded in (back, reread):
        assert loaded.method == method
        assert loaded.task == TASK
        assert loaded.models == [model_record(backbone)]
        if method == "prompt":
            assert torch.equal(loaded.embedding, artifact.embedding)
        else:
            assert torch.equal(loaded.kv.keys, artifact.kv.keys)
            assert torch.equal(loaded.kv.values, artifact.kv.values)


def test_cli_export_import_and_use_the_imported_prompt(
    monkeypatch, capsys, tiny, tiny_dirs, tmp_path, sentiment_dir
):
    prompt = save_artifact(random_prompt(tiny["llama"]), tmp_path / "p.safetensors")
    adapter, back = tmp_path / "adapter", tmp_path / "back.safetensors"
    code, out, err = invoke(
        monkeypatch, capsys, "export", prompt, "--format", "peft", "-m", tiny_dirs["llama"],
        "--out", adapter, "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {
        "path": str(adapter),
        "format": "peft",
        "model": str(tiny_dirs["llama"]),
    }
    assert (adapter / "adapter_model.safetensors").is_file()
    code, out, err = invoke(
        monkeypatch, capsys, "import", adapter, "--from", "peft", "--out", back, "--json"
    )
    assert code == 0, err
    assert json.loads(out) == {
        "path": str(back),
        "method": "prompt",
        "length": 4,
        "hidden_size": 32,
    }
    code, out, err = invoke(monkeypatch, capsys, "compare", prompt, back, "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"]["euclidean_pairwise"][0][1] == pytest.approx(0.0, abs=1e-6)
    results = []
    for path in (prompt, back):  # the task came back with the prompt: no --template needed
        code, out, err = invoke(
            monkeypatch, capsys, "evaluate", path, "--data", sentiment_dir, "--json"
        )
        assert code == 0, err
        results.append(json.loads(out))
    assert results[1]["loss"] == pytest.approx(results[0]["loss"], abs=1e-6)
    assert results[1]["accuracy"] == results[0]["accuracy"]
    data = ("--data", sentiment_dir, "--split", "dev")
    code, out, err = invoke(
        monkeypatch, capsys, "explain", back, *data, "--max-examples", "8",
        "--projection", "none", "--out", tmp_path / "report", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert len(json.loads(out)["tokens"]) == 4
    short = tmp_path / "short.safetensors"
    code, out, err = invoke(
        monkeypatch, capsys, "compress", back, "--keep", "2", "--out", short, *data, "--json"
    )
    assert code == 0, err
    assert load_artifact(short).length == 2


def test_cli_import_of_a_peft_prefix_checks_the_named_model(
    monkeypatch, capsys, tiny_dirs, tmp_path
):
    make_peft_adapter(tiny_dirs["llama"], "prefix_projection", tmp_path / "adapter")
    out_path = tmp_path / "x.safetensors"
    args = ("import", tmp_path / "adapter", "--from", "peft", "--out", out_path)
    code, out, err = invoke(monkeypatch, capsys, *args, "-m", tiny_dirs["llama"], "--json")
    assert code == 0, err
    assert json.loads(out) == {"path": str(out_path), "method": "prefix", "length": 3}
    code, _, err = invoke(monkeypatch, capsys, *args, "-m", tiny_dirs["gpt2"])
    assert_one_line_error(code, err, 1, "2 layers x 2 key-value heads x head dim 8, but model")


def test_cli_import_errors_are_one_line(monkeypatch, capsys, tiny_dirs, tmp_path):
    def run(source, *extra):
        out_path = tmp_path / "never.safetensors"
        code, _, err = invoke(
            monkeypatch, capsys, "import", source, "--from", "peft", "--out", out_path, *extra
        )
        assert not out_path.exists()
        return code, err

    code, err = run(tmp_path / "nowhere")
    assert_one_line_error(code, err, 1, "nowhere not found")
    (tmp_path / "empty").mkdir()
    code, err = run(tmp_path / "empty")
    assert_one_line_error(code, err, 1, "is not a PEFT adapter folder: it has no adapter_config")
    lora = get_peft_model(
        load_model(tiny_dirs["llama"]),
        LoraConfig(task_type=TaskType.CAUSAL_LM, r=2, target_modules=["q_proj"]),
    )
    lora.save_pretrained(tmp_path / "lora")
    code, err = run(tmp_path / "lora")
    assert_one_line_error(code, err, 1, "holds a LORA adapter; softprompt imports only")
    torch.manual_seed(0)
    wide = get_peft_model(
        load_model(tiny_dirs["llama"]),
        PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=2, token_dim=48),
    )
    wide.save_pretrained(tmp_path / "wide")
    code, err = run(tmp_path / "wide", "-m", tiny_dirs["llama"])
    assert_one_line_error(code, err, 1, "has hidden size 48")
    assert (
        f"(trained on {tiny_dirs['llama']}) but model {tiny_dirs['llama']} has hidden size 32"
        in err
    )
    code, _, err = invoke(
        monkeypatch, capsys, "import", tmp_path / "wide", "--from", "lora", "--out", "x"
    )
    assert_one_line_error(code, err, 2, "unknown --from 'lora'; this version imports: esp, peft")


def edit_adapter(folder, **changes):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_inconsistent_adapter_files_are_refused(tiny_dirs, tmp_path):
    adapter = tmp_path / "adapter"
    make_peft_adapter(tiny_dirs["llama"], "prefix", adapter)
    out_path = tmp_path / "x.safetensors"
    edit_adapter(adapter, num_virtual_tokens=4)
    with pytest.raises(PromptFileError, match=r"is torch.float32 \[3, 64\], but .* \[4, 64\]"):
        import_peft(adapter, out_path)
    edit_adapter(adapter, num_virtual_tokens=3, num_transformer_submodules=2)
    with pytest.raises(PromptFileError, match="encoder-decoder adapter"):
        import_peft(adapter, out_path)
    edit_adapter(adapter, num_transformer_submodules=1, num_layers="two")
    with pytest.raises(PromptFileError, match="'num_layers' must be a positive integer"):
        import_peft(adapter, out_path)
    edit_adapter(adapter, num_layers=2)
    weights = adapter / "adapter_model.safetensors"
    tensor = load_file(weights)["prompt_embeddings"]
    tensor[0, 0] = float("nan")
    save_file({"prompt_embeddings": tensor}, weights)
    with pytest.raises(PromptFileError, match="NaN or infinite"):
        import_peft(adapter, out_path)
    weights.rename(adapter / "adapter_model.bin")
    with pytest.raises(PromptFileError, match=r"no adapter_model.safetensors; only adapter_model"):
        import_peft(adapter, out_path)
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(PromptFileError, match="is not valid JSON"):
        import_peft(adapter, out_path)
    assert not out_path.exists()


def test_export_refuses_what_peft_cannot_load(tiny, tmp_path):
    prompt = save_artifact(random_prompt(tiny["llama"]), tmp_path / "p.safetensors")
    with pytest.raises(ModelError, match="PEFT export needs a causal LM; .* is a masked LM"):
        export_peft(prompt, tiny["bert"], tmp_path / "a")
    wide = SoftPrompt(embedding=torch.randn(3, 48))
    wide_path = save_artifact(wide, tmp_path / "wide.safetensors")
    with pytest.raises(PromptFileError, match="has hidden size 48 .* has hidden size 32"):
        export_peft(wide_path, tiny["llama"], tmp_path / "a")
    other = save_artifact(random_prefix(tiny["gpt2"]), tmp_path / "gpt2-prefix.safetensors")
    with pytest.raises(PromptFileError, match="4 key-value heads .* has 2 x 2 x 8"):
        export_peft(other, tiny["llama"], tmp_path / "a")
    with pytest.raises(UsageError, match="is a file; give a folder for the PEFT adapter"):
        export_peft(prompt, tiny["llama"], prompt)
    assert not (tmp_path / "a").exists()


def test_export_never_leaves_a_half_written_folder(monkeypatch, capsys, tiny_dirs, tmp_path):
    prompt = save_artifact(random_prompt(load_backbone(str(tiny_dirs["llama"]))), tmp_path / "p")
    adapter = tmp_path / "adapter"
    args = ("export", prompt, "--format", "peft", "-m", tiny_dirs["llama"], "--out", adapter)
    adapter.mkdir()
    (adapter / "mine.txt").write_text("keep me")
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, 2, "exists and is not empty; choose another --out or add")
    assert (adapter / "mine.txt").read_text() == "keep me"

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(peft_interop, "write_safetensors_atomic", crash)
    with pytest.raises(OSError, match="disk full"):
        export_peft(prompt, str(tiny_dirs["llama"]), adapter, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "p"]
    assert sorted(p.name for p in adapter.iterdir()) == ["mine.txt"]
    monkeypatch.undo()
    code, _, err = invoke(monkeypatch, capsys, *args, "--force")
    assert code == 0, err
    assert sorted(p.name for p in adapter.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "p"]
    code, _, err = invoke(monkeypatch, capsys, "export", prompt, "--format", "onnx", "--out", "x")
    assert_one_line_error(code, err, 2, "unknown --format 'onnx'; this version exports: peft")


SMOL = "smollm2-135m"
SMOL_TEXTS = ["The capital of France is", "Once upon a time, a small robot"]


@pytest.fixture(scope="module")
def smol():
    """softprompt's SmolLM2 and a second copy for PEFT to wrap (prompt learning leaves the
    base model unchanged, so one copy serves every adapter)."""
    return load_backbone(SMOL), load_backbone(SMOL).model


def smol_artifacts(backbone) -> dict:
    torch.manual_seed(0)
    embedding = init_embedding(8, backbone, "vocab", seed=0)
    prompt = SoftPrompt(embedding=embedding * 1.5, models=[model_record(backbone)])
    ids = backbone.tokenizer("Answer in French:", return_tensors="pt").input_ids
    keys, values = text_prefix(backbone.model, ids)
    kv = PrefixKV(keys + 0.3 * torch.randn_like(keys), values + 0.3 * torch.randn_like(values))
    return {"prompt": prompt, "prefix": SavedPrefix(kv=kv, models=[model_record(backbone)])}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_smollm2_export_matches_peft(method, smol, tmp_path, no_network):
    backbone, base = smol
    artifact = smol_artifacts(backbone)[method]
    adapter = export_peft(save_artifact(artifact, tmp_path / "a"), backbone, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == SMOL
    peft_model = PeftModel.from_pretrained(base, adapter)
    assert_same_logits(backbone, artifact, peft_model, SMOL_TEXTS)
    assert_same_generation(backbone, artifact, peft_model, SMOL_TEXTS, batched=method == "prefix")


SMOL_PEFT_CONFIGS = {
    **PEFT_CONFIGS,
    # PEFT's default RANDOM init draws N(0, 1) entries, far above SmolLM2's embedding scale;
    # its vocabulary init gives a prompt of realistic size
    "prompt": lambda: PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=5,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SMOL_PEFT_CONFIGS))
def test_smollm2_peft_made_adapter_imports(kind, smol, tmp_path, no_network):
    backbone, base = smol
    torch.manual_seed(5)
    get_peft_model(base, SMOL_PEFT_CONFIGS[kind]()).save_pretrained(tmp_path / "adapter")
    import_peft(tmp_path / "adapter", tmp_path / "x.safetensors", [backbone])
    artifact = load_artifact(tmp_path / "x.safetensors")
    # compared with the adapter as PEFT loads it from disk
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert_same_logits(backbone, artifact, loaded, SMOL_TEXTS)
    assert_same_generation(backbone, artifact, loaded, SMOL_TEXTS, batched=kind != "prompt")


def test_cli_import_from_esp_still_works_beside_peft(monkeypatch, capsys, tiny_dirs, tmp_path):
    weight = torch.randn(3, 32)
    torch.save({"weight": weight}, tmp_path / "research.pt")
    out_path = tmp_path / "esp.safetensors"
    args = ("import", tmp_path / "research.pt", "--from", "esp", "--out", out_path)
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, 2, "name the model(s) the prompt belongs to with --model")
    code, out, err = invoke(monkeypatch, capsys, *args, "-m", tiny_dirs["llama"], "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "path": str(out_path),
        "method": "prompt",
        "length": 3,
        "hidden_size": 32,
    }
    assert torch.equal(load_artifact(out_path).embedding, weight)


@pytest.mark.parametrize(
    "umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)]
)
def test_exported_folder_and_files_follow_the_umask(
    umask, folder_mode, file_mode, monkeypatch, capsys, tiny_dirs, tmp_path
):
    """The adapter folder and its two files get the modes mkdir/open would give under the
    umask (mkdtemp's 0700 and mkstemp's 0600 are only for the staging names)."""
    prompt = save_artifact(random_prompt(load_backbone(str(tiny_dirs["llama"]))), tmp_path / "p")
    adapter = tmp_path / "adapter"
    previous = os.umask(umask)
    try:
        code, _, err = invoke(
            monkeypatch, capsys, "export", prompt, "--format", "peft", "-m", tiny_dirs["llama"],
            "--out", adapter,
        )  # fmt: skip
    finally:
        os.umask(previous)
    assert code == 0, err
    assert stat.S_IMODE(adapter.stat().st_mode) == folder_mode
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert stat.S_IMODE((adapter / name).stat().st_mode) == file_mode, name
