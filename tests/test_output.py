"""What the commands print for a reader: tables that stay one line per row when piped, text
measured in display cells, no replacement character where generation cut a character."""

from __future__ import annotations

import unicodedata
from types import SimpleNamespace

import pytest
import torch

from softprompt.generation import SamplingOptions, drop_cut_character, generate
from softprompt.methods.prompt import SoftPrompt, save_prompt
from softprompt.steering.base import NoSteering
from test_cli import invoke


@pytest.fixture(autouse=True)
def no_columns(monkeypatch):
    """COLUMNS set in the environment would decide the width: these tests are about without."""
    monkeypatch.delenv("COLUMNS", raising=False)


def cells(line: str) -> int:
    """Display width of a line by Unicode's East Asian Width (wide and full-width: 2 cells),
    independent of rich's own measure."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def byte_tokenizer():
    """A byte-level tokenizer (every byte one token, as GPT-2-style BPE falls back to): a cut
    after any token can split a multi-byte character."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<pad>"] = len(vocab)
    core = Tokenizer(BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>")


def canned_backbone(continuation: str, cut_bytes: int):
    """A causal backbone whose model 'generates' `continuation` less its last `cut_bytes`
    byte tokens, as `--max-new-tokens` stops inside a character."""
    tokenizer = byte_tokenizer()
    new = tokenizer(continuation).input_ids[: -cut_bytes or None]

    def fake_generate(**kwargs):
        return torch.tensor([new] * kwargs["attention_mask"].shape[0])

    return SimpleNamespace(
        kind="causal",
        name="bytes",
        tokenizer=tokenizer,
        device=torch.device("cpu"),
        embed=lambda ids: torch.zeros(*ids.shape, 4),
        model=SimpleNamespace(generate=fake_generate),
    )


def canned_prompt_run(monkeypatch, tmp_path, continuation: str):
    """A prompt file for `generate PROMPT --compare` whose model continues with `continuation`
    with and without it (the table's layout is under test, not the model)."""
    backbone = canned_backbone(continuation, 0)
    monkeypatch.setattr("softprompt.models.backbone.load_backbone", lambda *a, **k: backbone)
    monkeypatch.setattr("softprompt.evaluation.steering", lambda *a, **k: NoSteering())
    prompt = SoftPrompt(embedding=torch.zeros(2, 4), models=[], task={})
    return save_prompt(prompt, tmp_path / "p.safetensors")


def test_drop_cut_character_removes_only_a_trailing_replacement():
    assert drop_cut_character("ok 😀 日\ufffd") == "ok 😀 日"
    assert drop_cut_character("ok \ufffd\ufffd") == "ok "
    assert drop_cut_character("a \ufffd b") == "a \ufffd b"  # written by the model: kept
    assert drop_cut_character("日本 😀") == "日本 😀"


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_generate_drops_a_character_cut_by_the_token_limit(cut):
    """😀 is 4 bytes: a stop after 1, 2 or 3 of them leaves no U+FFFD, and the text before it."""
    backbone = canned_backbone(" good 😀", cut)
    options = SamplingOptions(max_new_tokens=8, greedy=True)
    assert generate(backbone, ["x"], None, options) == [" good "]


def test_cli_generate_prints_no_replacement_character(monkeypatch, capsys):
    backbone = canned_backbone(" 日本 [b]ok[/b] 😀", 2)
    monkeypatch.setattr("softprompt.models.backbone.load_backbone", lambda *a, **k: backbone)
    code, out, err = invoke(
        monkeypatch, capsys, "generate", "-m", "x", "-t", "[x]", "--greedy", "--device", "cpu"
    )
    assert code == 0, err
    assert "\ufffd" not in out
    assert out.rstrip("\n") == "[x] 日本 [b]ok[/b] "  # brackets as written, not markup


def long_prompts(tmp_path, count: int = 2) -> list:
    """Prompt files with names long enough that a table row of them exceeds 80 columns."""
    paths = []
    for i in range(count):
        prompt = SoftPrompt(embedding=torch.randn(3, 8), models=[], task={})
        name = f"a_prompt_file_with_a_long_descriptive_name_number_{i}.safetensors"
        paths.append(save_prompt(prompt, tmp_path / name))
    return paths


def test_piped_compare_table_keeps_each_row_on_one_line(monkeypatch, capsys, tmp_path):
    paths = long_prompts(tmp_path)
    code, out, err = invoke(monkeypatch, capsys, "compare", *paths)
    assert code == 0, err
    lines = out.splitlines()
    for path in paths:
        label = path.stem
        rows = [line for line in lines if line.lstrip("│ ").startswith(label)]
        assert len(rows) == 6, rows  # one row per metric table, whole
        assert all(line.count("│") == 4 for line in rows)  # label and two values, one line
    assert max(len(line) for line in lines) > 120


def test_piped_generate_compare_table_keeps_rows_whole(monkeypatch, capsys, tmp_path):
    """A long continuation with emoji and CJK stays one line per row of the table, and every
    line of the table is the same number of display cells wide (emoji and CJK count 2)."""
    continuation = " and then 😀 the film went on, 日本語のテキスト and more words " * 3
    prompt = canned_prompt_run(monkeypatch, tmp_path, continuation)
    args = ("generate", prompt, "-m", "x", "-t", "a text", "--greedy", "--compare")
    code, out, err = invoke(monkeypatch, capsys, *args, "--device", "cpu")
    assert code == 0, err
    lines = out.splitlines()
    rows = [line for line in lines if "a text" in line]
    assert len(rows) == 1 and rows[0].count(continuation.strip()) == 2
    assert len({cells(line) for line in lines}) == 1


def test_a_narrow_table_folds_cjk_instead_of_cutting_it(monkeypatch, capsys, tmp_path):
    """With COLUMNS=40 the table wraps, but no text is cut to an ellipsis and rows still line
    up in display cells."""
    monkeypatch.setenv("COLUMNS", "40")
    prompt = canned_prompt_run(monkeypatch, tmp_path, " 日本語のテキストがとても長いです 😀😀 end")
    args = ("generate", prompt, "-m", "x", "-t", "text", "--greedy", "--compare")
    code, out, err = invoke(monkeypatch, capsys, *args, "--device", "cpu")
    assert code == 0, err
    lines = out.splitlines()
    assert "…" not in out
    assert "".join(lines).count("😀") == 4  # two per column, none lost
    widths = {cells(line) for line in lines}
    assert len(widths) == 1 and widths.pop() <= 40
