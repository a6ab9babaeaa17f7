"""What the commands print for a reader: tables that stay one line per row when piped, text
measured in display cells, no replacement character where generation cut a character."""

from __future__ import annotations

import copy
import io
import re
import unicodedata

import pytest
import torch

from softprompt.decoding.text import drop_cut_character
from softprompt.generation import SamplingOptions, generate
from softprompt.methods.prompt import SoftPrompt, save_prompt
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


def canned_backbone(monkeypatch, tiny, continuation: str, cut_bytes: int):
    """A causal backbone (the tiny llama with a byte-level tokenizer) whose decoder picks the
    byte tokens of `continuation` less its last `cut_bytes`, then ends the row, as
    `--max-new-tokens` stops inside a character."""
    tokenizer = byte_tokenizer()
    new = tokenizer(continuation).input_ids[: -cut_bytes or None]
    end = tokenizer.pad_token_id

    def replay(samplers, logits):
        picked = []
        for sampler in samplers:
            count = sampler.replayed = getattr(sampler, "replayed", -1) + 1
            picked.append(new[count] if count < len(new) else end)
        return picked

    monkeypatch.setattr("softprompt.decoding.update.sample_rows", replay)
    monkeypatch.setattr("softprompt.decoding.engine._eos_ids", lambda backbone: {end})
    backbone = copy.copy(tiny["llama"])
    backbone.tokenizer = tokenizer
    return backbone


def canned_prompt_run(monkeypatch, tiny, tmp_path, continuation: str):
    """A prompt file for `generate PROMPT --compare` whose model continues with `continuation`
    with and without it (the table's layout is under test, not the model)."""
    backbone = canned_backbone(monkeypatch, tiny, continuation, 0)
    monkeypatch.setattr("softprompt.models.loading.load_backbone", lambda *a, **k: backbone)
    prompt = SoftPrompt(embedding=torch.zeros(2, backbone.hidden_size), models=[], task={})
    return save_prompt(prompt, tmp_path / "p.safetensors")


def test_drop_cut_character_removes_only_a_trailing_replacement():
    assert drop_cut_character("ok 😀 日\ufffd") == "ok 😀 日"
    assert drop_cut_character("ok \ufffd\ufffd") == "ok "
    assert drop_cut_character("a \ufffd b") == "a \ufffd b"  # written by the model: kept
    assert drop_cut_character("日本 😀") == "日本 😀"


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_generate_drops_a_character_cut_by_the_token_limit(monkeypatch, tiny, cut):
    """😀 is 4 bytes: a stop after 1, 2 or 3 of them leaves no U+FFFD, and the text before it."""
    backbone = canned_backbone(monkeypatch, tiny, " good 😀", cut)
    options = SamplingOptions(max_new_tokens=8, greedy=True)
    assert generate(backbone, ["x"], None, options) == [" good "]


def test_cli_generate_prints_no_replacement_character(monkeypatch, capsys, tiny):
    backbone = canned_backbone(monkeypatch, tiny, " 日本 [b]ok[/b] 😀", 2)
    monkeypatch.setattr("softprompt.models.loading.load_backbone", lambda *a, **k: backbone)
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


def test_piped_generate_compare_table_keeps_rows_whole(monkeypatch, capsys, tmp_path, tiny):
    """A long continuation with emoji and CJK stays one line per row of the table, and every
    line of the table is the same number of display cells wide (emoji and CJK count 2)."""
    continuation = " and then 😀 the film went on, 日本語のテキスト and more words " * 3
    prompt = canned_prompt_run(monkeypatch, tiny, tmp_path, continuation)
    args = ("generate", prompt, "-m", "x", "-t", "a text", "--greedy", "--compare")
    args += ("--max-new-tokens", "400")
    code, out, err = invoke(monkeypatch, capsys, *args, "--device", "cpu")
    assert code == 0, err
    lines = out.splitlines()
    rows = [line for line in lines if "a text" in line]
    assert len(rows) == 1 and rows[0].count(continuation.strip()) == 2
    assert len({cells(line) for line in lines}) == 1


def test_a_narrow_table_folds_cjk_instead_of_cutting_it(monkeypatch, capsys, tmp_path, tiny):
    """With COLUMNS=40 the table wraps, but no text is cut to an ellipsis and rows still line
    up in display cells."""
    monkeypatch.setenv("COLUMNS", "40")
    continuation = " 日本語のテキストがとても長いです 😀😀 end"
    prompt = canned_prompt_run(monkeypatch, tiny, tmp_path, continuation)
    args = ("generate", prompt, "-m", "x", "-t", "text", "--greedy", "--compare")
    args += ("--max-new-tokens", "400")
    code, out, err = invoke(monkeypatch, capsys, *args, "--device", "cpu")
    assert code == 0, err
    lines = out.splitlines()
    assert "…" not in out
    assert "".join(lines).count("😀") == 4  # two per column, none lost
    widths = {cells(line) for line in lines}
    assert len(widths) == 1 and widths.pop() <= 40


# --- progress on stderr --------------------------------------------------------------------

VERBALIZER = {"negative": " bad", "positive": " good"}


def saved_prompt(tiny, tmp_path, length: int = 6):
    """A random prompt for the tiny Llama with the sentiment task's template and verbalizer."""
    from softprompt.methods.artifact import model_record

    embedding = torch.randn(length, 32, generator=torch.Generator().manual_seed(0))
    task = {"template": "review: {text} sentiment:", "verbalizer": VERBALIZER}
    prompt = SoftPrompt(embedding, models=[model_record(tiny["llama"])], task=task)
    return save_prompt(prompt, tmp_path / "p.safetensors")


def progress_counts(err: str, what: str, unit: str, note: str = "") -> list[tuple[int, int]]:
    """(done, total) of each log line of `what` (ending in the `note` pattern, if any)."""
    end = f", {note}" if note else ""
    line = re.compile(rf"{re.escape(what)}: (\d+)/(\d+) {unit} \((\d+)%\), \d+ s{end}")
    found = [line.fullmatch(text) for text in err.splitlines()]
    return [(int(m[1]), int(m[2])) for m in found if m]


def assert_log_progress(err: str, what: str, unit: str, note: str = "") -> None:
    """Several plain lines (no carriage return, no escape codes), counts rising to the total."""
    assert "\r" not in err and "\x1b" not in err
    counts = progress_counts(err, what, unit, note)
    assert len(counts) >= 3, err
    done = [d for d, _ in counts]
    assert done == sorted(set(done)), counts
    assert len({t for _, t in counts}) == 1 and done[-1] == counts[0][1]


def test_explain_reports_progress_in_log_lines(monkeypatch, capsys, tiny, tiny_dirs, tmp_path):
    from conftest import SENTIMENT

    prompt = saved_prompt(tiny, tmp_path)
    code, _, err = invoke(
        monkeypatch, capsys, "explain", prompt, "-m", tiny_dirs["llama"], "--data", SENTIMENT,
        "--split", "dev", "--max-examples", "8", "--batch-size", "4", "--projection", "none",
        "--out", tmp_path / "report", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert_log_progress(err, "importance (llama, 7 variants)", "ablated examples")
    assert progress_counts(err, "importance (llama, 7 variants)", "ablated examples")[-1] == (
        56,
        56,
    )  # the full prompt and 6 ablations, on 8 examples each


def test_compress_reports_progress_in_log_lines(monkeypatch, capsys, tiny, tmp_path):
    from conftest import SENTIMENT

    prompt = saved_prompt(tiny, tmp_path)
    code, _, err = invoke(
        monkeypatch, capsys, "compress", prompt, "--keep", "2", "--out", tmp_path / "short",
        "--data", SENTIMENT, "--split", "dev", "--batch-size", "4", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert_log_progress(err, "importance (llama, 7 variants)", "ablated examples")


@pytest.fixture(scope="module")
def two_llamas(tmp_path_factory) -> list[str]:
    """Two tiny Llamas of one tokenizer (different seeds): a joint run's models."""
    from conftest import corpus
    from softprompt.models.tiny import save_tiny

    root = tmp_path_factory.mktemp("two-llamas")
    return [str(save_tiny(root / f"llama-{s}", corpus(), "llama", seed=s)) for s in (0, 1)]


def train_three_steps(models: list[str], out_dir) -> None:
    from conftest import SENTIMENT
    from softprompt.config import validate_config
    from softprompt.training.trainer import Trainer

    config = {
        "models": models,
        "task": {
            "data": str(SENTIMENT),
            "template": "review: {text} sentiment:",
            "verbalizer": VERBALIZER,
            "max_examples": 8,
        },
        "prompt": {"length": 2},
        "train": {"steps": 3, "batch_size": 2, "eval_every": 1, "checkpoint_every": 3},
    }
    Trainer(validate_config(config), out_dir, progress=True).run()


@pytest.mark.parametrize("count", [1, 2])
def test_training_log_lines_show_the_step_counter(count, capsys, two_llamas, tmp_path):
    """One model or two, the log lines count the steps and carry the loss and dev metrics."""
    train_three_steps(two_llamas[:count], tmp_path / "run")
    err = capsys.readouterr().err
    assert_log_progress(err, "train", "steps", r"loss [\d.]+ dev loss [\d.]+ accuracy [\d.]+.*")
    last = [line for line in err.splitlines() if line.startswith("train: ")][-1]
    assert last.startswith("train: 3/3 steps (100%), ")
    assert ("llama-0:" in last and "llama-1:" in last) == (count == 2)


@pytest.mark.parametrize("count", [1, 2])
def test_training_bar_on_a_terminal_keeps_the_step_counter(
    count, monkeypatch, two_llamas, tmp_path
):
    """On an 80-column terminal the two models' dev metrics make the bar's text long: the
    note is cut, not the `3/3` counter (which rich squeezed to `3…` before)."""
    from rich.console import Console

    screen = io.StringIO()
    terminal = Console(file=screen, width=80, force_terminal=True)
    monkeypatch.setattr("softprompt.progress.stderr_is_terminal", lambda: True)
    monkeypatch.setattr("softprompt.progress.Console", lambda **_: terminal)
    train_three_steps(two_llamas[:count], tmp_path / "run")
    final = screen.getvalue().split("\r")[-1]
    assert "3/3" in final, final


def test_slow_work_logs_a_line_every_30_seconds_between_tenths(monkeypatch, capsys):
    """A step of 1 in 1000 passes no tenth, but half a minute without a line gets one."""
    from softprompt import progress as progress_module

    now = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    with progress_module.Progress("work", 1000, unit="items", live=False) as progress:
        progress.update(1)
        now[0] += 31
        progress.update(2)
        now[0] += 1
        progress.update(3)
        now[0] += 40
        progress.update(3)  # 41 s after the last line, with new work since
        now[0] += 40
        progress.update(3)  # no new work since the last line: nothing to say
        progress.update(100)  # a tenth passed
    assert capsys.readouterr().err.splitlines() == [
        "work: 2/1000 items (0%), 31 s",
        "work: 3/1000 items (0%), 1 min 12 s",
        "work: 100/1000 items (10%), 1 min 52 s",
    ]
