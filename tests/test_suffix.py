import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softprompt.tasks.suffix import sentence_starts, suffix_rate
from softprompt.text.sentences import add_suffix, pack, split_sentences

SMILEY = " 😃"


def test_english_sentences_with_abbreviations_and_numbers():
    text = (
        "Dr. Smith arrived at 5 p.m. Then we ate. It cost 3.5 dollars, e.g. cheap! "
        'Was it in the U.S. or not? "Yes," she said. The end'
    )
    assert split_sentences(text) == [
        "Dr. Smith arrived at 5 p.m.",
        "Then we ate.",
        "It cost 3.5 dollars, e.g. cheap!",
        "Was it in the U.S. or not?",
        '"Yes," she said.',
        "The end",
    ]


def test_japanese_sentences():
    text = "今日は晴れです。散歩に行きました！楽しかったですか？「はい。」"
    expected = ["今日は晴れです。", "散歩に行きました！", "楽しかったですか？", "「はい。」"]
    assert split_sentences(text) == expected


def test_suffix_goes_after_every_sentence_and_nothing_else_changes():
    text = "It rained. We stayed in!  Tomorrow?\n今日は晴れです。"
    assert add_suffix(text, SMILEY) == (
        "It rained. 😃 We stayed in! 😃  Tomorrow? 😃\n今日は晴れです。 😃"
    )


def test_packing_loses_no_text(tiny):
    tokenizer = tiny["gpt2"].tokenizer
    text = add_suffix("great movie . it was good . awful and bad , really bad . " * 5, SMILEY)
    chunks = pack(tokenizer, text, 8)
    assert "".join(chunks) == text
    assert all(len(tokenizer(c, add_special_tokens=False).input_ids) <= 8 for c in chunks)
    assert len(chunks) > 3


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="abc .!?。XY\n", max_size=80), size=st.integers(1, 6))
def test_packing_property(tiny, text, size):
    tokenizer = tiny["llama"].tokenizer
    assert "".join(pack(tokenizer, text, size)) == text


def test_suffix_rate_counts_sentence_ends():
    assert suffix_rate(["One. 😃 Two! 😃 Three.", "Four 😃 five? no"], SMILEY) == (0.75, 4)
    assert suffix_rate(["No end here"], SMILEY) == (0.0, 0)


def test_japanese_line_breaks_end_sentences_without_punctuation():
    text = "【お知らせ】臨時休業のご案内\n明日は店を閉めます。よろしくお願いします"
    assert split_sentences(text) == [
        "【お知らせ】臨時休業のご案内",
        "明日は店を閉めます。",
        "よろしくお願いします",
    ]
    english = "A line that wraps\nin the middle. Next."
    assert split_sentences(english) == ["A line that wraps\nin the middle.", "Next."]


def test_sentence_starts_of_text_without_spaces_are_characters():
    texts = ["週末に祖母の家で梅干し作りを手伝いました。短い文。", "It was a very good day indeed."]
    starts = sentence_starts(texts, 10)
    assert starts == ["週末に祖母の家で", "It was a very"]


def test_the_japanese_sample_corpus_gives_enough_sentence_starts():
    from conftest import ROOT
    from softprompt.data import DataSpec, load_split

    spec = DataSpec(source=str(ROOT / "examples" / "data" / "smiley-ja"), label_field=None)
    test = load_split(spec, "test")
    assert len(test) >= 30
    assert len(sentence_starts([e.text for e in test], 1000)) >= 40


def test_the_suffix_rate_refuses_too_few_sentence_starts(tiny):
    from softprompt.data import Example
    from softprompt.errors import DataError
    from softprompt.steering.base import NoSteering
    from softprompt.tasks.suffix import evaluate_suffix

    examples = [Example(text="短い。", where="x.jsonl:1"), Example(text="One two.", where="x:2")]
    with pytest.raises(
        DataError, match="needs at least 10 held-out sentence starts, but the split has 0"
    ):
        evaluate_suffix(tiny["llama"], NoSteering(), examples, SMILEY)
