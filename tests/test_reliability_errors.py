"""Catalogued errors not covered elsewhere (docs/errors.md)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import write_jsonl
from softprompt.data import DataSpec, Example, load_split
from softprompt.errors import ConfigError, DataError, ModelError
from softprompt.methods.prompt import SoftPrompt
from softprompt.models import check_gguf_readable, load_backbone
from softprompt.session import predict
from softprompt.tasks.classification import ClassificationTask
from softprompt.tasks.lm import LanguageModelingTask
from test_cli import assert_one_line_error, invoke, write_config


def test_masked_task_needs_a_mask_token(tiny, tiny_dirs):
    no_mask = replace(tiny["bert"], tokenizer=tiny["llama"].tokenizer)
    with pytest.raises(ModelError, match="has no mask token"):
        ClassificationTask(no_mask, "{text}", {"a": " good"})
    with pytest.raises(ModelError, match="cannot load model .* AutoModelForMaskedLM"):
        load_backbone(str(tiny_dirs["llama"]), kind="masked")


def test_lm_task_needs_a_causal_model(tiny):
    with pytest.raises(ModelError, match="needs a causal LM"):
        LanguageModelingTask(tiny["bert"])


def test_unreadable_data_file(tmp_path):
    (tmp_path / "dev.jsonl").write_bytes(b'{"text": "\xff\xfe", "label": "a"}\n')
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_split(DataSpec(str(tmp_path)), "dev")


# --- the verbalizer: every label needs a word the model can tell apart from the others ---


def test_two_labels_with_one_word_are_refused(tiny):
    with pytest.raises(ConfigError) as caught:
        ClassificationTask(tiny["llama"], "{text} :", {"negative": " good", "positive": " good"})
    message = str(caught.value)
    assert "'negative'" in message and "'positive'" in message and "' good'" in message
    assert "a word of its own" in message


def test_label_words_of_one_token_are_refused_naming_the_token(tiny):
    # neither word is in the tiny BERT vocabulary: both are [UNK], so the scores tie forever
    verbalizer = {"negative": " zzzq", "positive": " qqqz"}
    with pytest.raises(ConfigError) as caught:
        ClassificationTask(tiny["bert"], "{text} [MASK]", verbalizer)
    message = str(caught.value)
    for fragment in ("' zzzq'", "' qqqz'", "'negative'", "'positive'", "[UNK]", "differently"):
        assert fragment in message
    # words of different tokens are fine, also when one starts with the other's token
    task = ClassificationTask(tiny["llama"], "{text} :", {"a": " good", "b": " good movie"})
    assert task.labels == ["a", "b"]


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_a_verbalizer_that_cannot_tell_labels_apart_is_a_usage_error(
    monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir, command
):
    same = {"negative": " good", "positive": " good"}
    config = write_config(tmp_path, tiny_dirs["llama"], sentiment_dir, verbalizer=same)
    args = {
        "train": ["train", config, "--out", tmp_path / "run", "--quiet"],
        "evaluate": ["evaluate", "-m", tiny_dirs["llama"], "--data", sentiment_dir],
        "predict": ["predict", "-m", tiny_dirs["llama"], "-t", "it was good"],
    }[command]
    if command != "train":
        args += ["--verbalizer", json.dumps(same)]
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, 2, "have the same word ' good'")
    assert not (tmp_path / "run" / "prompt.safetensors").exists()


# --- GGUF files that are cut short or are not GGUF ---


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory) -> bytes:
    """The bytes of a small well-formed GGUF file (a header, a vocabulary and one tensor)."""
    import gguf
    import numpy as np

    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(32)
    writer.add_token_list([f"t{i}" for i in range(40)])
    writer.add_tensor("token_embd.weight", np.zeros((40, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def test_a_whole_gguf_file_passes_the_check(tmp_path, valid_gguf):
    path = tmp_path / "whole.gguf"
    path.write_bytes(valid_gguf)
    check_gguf_readable(path)  # no error: the check refuses only what the reader cannot read


@pytest.mark.parametrize(
    "content",
    [
        lambda whole: whole[:1000],
        lambda whole: whole[:-100],
        lambda whole: whole[:10],
        lambda whole: b"GGUF",
        lambda whole: b"GGUF" + bytes(range(40)),
        lambda whole: bytes(range(256)) * 4,
    ],
    ids=["first-1000-bytes", "last-100-missing", "first-10-bytes", "magic-only", "junk", "no-gguf"],
)
def test_a_broken_gguf_file_is_one_line(monkeypatch, capsys, tmp_path, valid_gguf, content):
    path = tmp_path / "x.gguf"
    path.write_bytes(content(valid_gguf))
    args = ["predict", "-m", path, "-t", "hello", "--verbalizer", '{"a": " t1", "b": " t2"}']
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, 1, f"{path} is not a readable GGUF file (")
    assert "download it again" in err and "converting" not in err


# --- a prompt for another model is reported before a missing verbalizer ---


@pytest.mark.parametrize("command", ["evaluate", "predict", "predict-input"])
def test_a_wrong_hidden_size_comes_before_the_missing_verbalizer(
    monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir, command
):
    wide = SoftPrompt(torch.zeros(2, 48)).save(tmp_path / "wide.safetensors")  # no task header
    model = ["-m", tiny_dirs["llama"]]
    args = {
        "evaluate": ["evaluate", wide, *model, "--data", sentiment_dir],
        "predict": ["predict", wide, *model, "-t", "good"],
        "predict-input": ["predict", wide, *model, "--input", sentiment_dir / "dev.jsonl"],
    }[command]
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, 1, "has hidden size 48")
    assert "hidden size 32" in err and "verbalizer" not in err


def test_a_fitting_prompt_without_a_task_still_asks_for_the_verbalizer(
    monkeypatch, capsys, tmp_path, tiny_dirs
):
    fits = SoftPrompt(torch.zeros(2, 32)).save(tmp_path / "fits.safetensors")
    code, _, err = invoke(monkeypatch, capsys, "predict", fits, "-m", tiny_dirs["llama"], "-t", "a")
    assert_one_line_error(code, err, 2, "needs a verbalizer and the prompt's metadata has none")


# --- mistakes with files and folders: one line each, a non-zero exit ---


def _artifact_mistakes(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    """Paths given where a prompt .safetensors is expected, and what the error must say."""
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    peft = tmp_path / "adapter"
    peft.mkdir()
    (peft / "adapter_config.json").write_text("{}")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    weights = tmp_path / "model.safetensors"
    save_file({f"layers.{i}.weight": torch.zeros(2, 2) for i in range(5)}, weights)
    return {
        "folder": (folder, ["is a folder, not a prompt file", ".safetensors file"]),
        "peft": (
            peft,
            [str(peft), "imports only PROMPT_TUNING, P_TUNING, PREFIX_TUNING and CARTRIDGE"],
        ),
        "empty": (empty, ["is empty (0 bytes)"]),
        "weights": (weights, ["no 'prompt' tensor", "and 2 more", "not a softprompt prompt"]),
    }


@pytest.mark.parametrize("mistake", ["folder", "peft", "empty", "weights"])
def test_a_wrong_artifact_path_is_one_line(monkeypatch, capsys, tmp_path, tiny_dirs, mistake):
    path, fragments = _artifact_mistakes(tmp_path)[mistake]
    code, _, err = invoke(monkeypatch, capsys, "predict", path, "-m", tiny_dirs["llama"], "-t", "a")
    assert_one_line_error(code, err, 1, fragments[0])
    assert all(fragment in err for fragment in fragments[1:])


def _train_mistakes(tmp_path: Path, model: Path, data: Path) -> dict[str, tuple[list, int, str]]:
    """Training runs that cannot work: the arguments, the exit code, the key words."""
    (tmp_path / "taken").write_text("not a folder")
    foldered = tmp_path / "foldered"
    (foldered / "train.jsonl").mkdir(parents=True)
    nulls = write_jsonl(tmp_path / "nulls" / "train.jsonl", [{"text": "good", "label": None}])
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    (tmp_path / "no-config").mkdir()

    def train(out: str = "run", **task) -> list:
        folder = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}"  # one per case
        folder.mkdir()
        config = write_config(folder, task.pop("model", model), task.pop("data", data), **task)
        return ["train", config, "--out", tmp_path / out, "--quiet"]

    empty_models = train()
    raw = yaml.safe_load(empty_models[1].read_text())
    empty_models[1].write_text(yaml.safe_dump({**raw, "models": []}))
    return {
        "out-is-a-file": (train("taken"), 2, "is a file; give a folder for the run"),
        "out-under-a-file": (train("taken/run"), 2, "is a file, so no folder fits there"),
        "out-not-creatable": (train("/proc/softprompt/run"), 2, "cannot be created"),
        "no-models": (empty_models, 2, "models: the list is empty; name at least one model"),
        "parquet-data": (train(data=tmp_path / "d.parquet"), 1, "unsupported file type"),
        "null-label": (train(data=nulls.parent), 1, "train.jsonl:1: field 'label' must be text"),
        "split-is-a-folder": (train(data=foldered), 1, "train.jsonl is a folder, not a data file"),
        "data-is-a-folder": (train(data=foldered / "train.jsonl"), 1, "is a folder, not a data"),
        "model-without-config": (train(model=tmp_path / "no-config"), 1, "has no config.json"),
    }


TRAIN_MISTAKES = [
    "out-is-a-file",
    "out-under-a-file",
    "out-not-creatable",
    "no-models",
    "parquet-data",
    "null-label",
    "split-is-a-folder",
    "data-is-a-folder",
    "model-without-config",
]


@pytest.mark.parametrize("mistake", TRAIN_MISTAKES)
def test_a_training_mistake_is_one_line(
    monkeypatch, capsys, tmp_path, tiny_dirs, sentiment_dir, mistake
):
    args, exit_code, fragment = _train_mistakes(tmp_path, tiny_dirs["llama"], sentiment_dir)[
        mistake
    ]
    code, _, err = invoke(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, exit_code, fragment)
    assert not list(tmp_path.glob("**/prompt.safetensors"))


def test_number_labels_are_read_as_their_text(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "good", "label": 1}, {"text": "x", "label": 0}])
    assert [e.label for e in load_split(DataSpec(str(tmp_path)), "train")] == ["1", "0"]


# --- texts that are not Unicode ---


def test_a_lone_surrogate_is_a_data_error_not_a_traceback(monkeypatch, capsys, tiny_dirs):
    # a command-line argument with bytes that are not UTF-8 reaches Python as lone surrogates
    args = ["predict", "-m", tiny_dirs["llama"], "-t", "good \udcff day"]
    code, _, err = invoke(monkeypatch, capsys, *args, "--verbalizer", '{"a": " good", "b": " bad"}')
    assert_one_line_error(code, err, 1, "--text: text holds \\udcff at character 5")


def test_an_empty_text_on_a_causal_model_without_bos_is_read_from_its_start_token(tiny):
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    llama = tiny["llama"]
    core = Tokenizer.from_str(llama.tokenizer.backend_tokenizer.to_str())
    core.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    plain = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>"
    )
    no_bos = replace(llama, tokenizer=plain)
    task = ClassificationTask(no_bos, "{text}", {"a": " good", "b": " bad"})
    assert task.specials_before == []  # the case: nothing before an empty text
    ids, positions, _ = task.encode(Example("", where="x"), with_label=False).rows[0]
    assert ids == [plain.eos_token_id] and positions == [0]
    verbalizer = {"a": " good", "b": " bad"}
    rows = predict(None, ["", "good"], no_bos, template="{text}", verbalizer=verbalizer)
    assert all(abs(sum(row["probabilities"].values()) - 1) < 1e-5 for row in rows)


def test_an_out_that_is_a_file_is_refused_before_the_models_load(
    monkeypatch, capsys, tmp_path, sentiment_dir
):
    (tmp_path / "taken").write_text("not a folder")
    config = write_config(tmp_path, tmp_path / "no-such-model", sentiment_dir)
    code, _, err = invoke(monkeypatch, capsys, "train", config, "--out", tmp_path / "taken")
    assert_one_line_error(code, err, 2, "is a file; give a folder for the run")
