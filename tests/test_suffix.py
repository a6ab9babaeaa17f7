from hypothesis import given, settings
from hypothesis import strategies as st

from softprompt.tasks.suffix import suffix_rate
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
