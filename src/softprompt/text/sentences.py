"""Sentences of plain text (English and Japanese punctuation): where they end, the text cut
into them, a suffix after each, and chunks of at most N tokens cut at sentence ends without
losing any text. Pure text work: the suffix task (softprompt.tasks.suffix) builds on it."""

from __future__ import annotations

import re

# Words after which a period does not end a sentence (titles, Latin abbreviations).
NEVER_ENDS = {
    "dr",
    "mr",
    "mrs",
    "ms",
    "prof",
    "st",
    "jr",
    "sr",
    "vs",
    "e.g",
    "i.e",
    "etc",
    "cf",
    "fig",
    "no",
    "approx",
    "inc",
    "ltd",
    "co",
    "mt",
}
# Abbreviations that end a sentence when a capitalised word follows ("at 5 p.m. Then ...").
MAY_END = {"a.m", "p.m", "u.s", "u.k", "u.n"}
CLOSERS = "\"'”’)]」』"
# a line break after kana or kanji ends a sentence (a heading, a list item) even without 。
CJK_LINE_END = re.compile(r"(?<=[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f])\n")
CANDIDATE = re.compile(r"[.!?。！？]+[" + re.escape(CLOSERS) + r"]*")


def sentence_ends(text: str) -> list[int]:
    """Character offsets just after each sentence's final punctuation (and closing quotes),
    and at line breaks that follow Japanese or Chinese text without it."""
    ends = []
    for match in CANDIDATE.finditer(text):
        end = match.end()
        rest = text[end:]
        if match.group()[0] in "。！？":
            ends.append(end)
            continue
        if rest and not rest[0].isspace():
            continue  # "3.5", "e.g.," or "U.S.-based": inside a token
        following = rest.lstrip()
        if following and following[0].islower():
            continue  # a lower-case word follows: the sentence goes on
        word = re.findall(r"[\w.]+$", text[: match.start()])
        word = word[0].lower() if word else ""
        if match.group().startswith(".") and word:
            if word in NEVER_ENDS:
                continue
            if word in MAY_END and not following:
                pass
            elif len(word) == 1 and word.isalpha() and following:
                continue  # an initial: "J. Smith"
        ends.append(end)
    ends = sorted({*ends, *(m.start() for m in CJK_LINE_END.finditer(text))})
    if text.rstrip() and (not ends or ends[-1] < len(text.rstrip())):
        ends.append(len(text.rstrip()))  # a last sentence without final punctuation
    return ends


def split_sentences(text: str) -> list[str]:
    """The sentences of a text, whitespace between them dropped."""
    pieces, start = [], 0
    for end in sentence_ends(text):
        piece = text[start:end].strip()
        if piece:
            pieces.append(piece)
        start = end
    return pieces


def add_suffix(text: str, suffix: str) -> str:
    """The text with `suffix` inserted after every sentence (nothing else changes)."""
    out, start = [], 0
    for end in sentence_ends(text):
        out.append(text[start:end])
        out.append(suffix)
        start = end
    out.append(text[start:])
    return "".join(out)


def pack(tokenizer, text: str, max_tokens: int) -> list[str]:
    """Cut a text into consecutive chunks of at most `max_tokens` tokens, at sentence ends
    where possible, else at token boundaries; "".join(chunks) == text."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    if not offsets:
        return [text] if text else []
    boundaries = set(sentence_ends(text))
    chunks, chunk_start, first_token = [], 0, 0
    while first_token < len(offsets):
        last = min(first_token + max_tokens, len(offsets))
        cut = last
        if last < len(offsets):
            # the latest sentence end inside this window
            for token in range(last, first_token, -1):
                if offsets[token - 1][1] in boundaries:
                    cut = token
                    break
        end_char = offsets[cut - 1][1] if cut < len(offsets) else len(text)
        chunks.append(text[chunk_start:end_char])
        chunk_start, first_token = end_char, cut
    if chunk_start < len(text):
        chunks[-1] += text[chunk_start:]
    return chunks
