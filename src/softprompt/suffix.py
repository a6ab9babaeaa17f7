"""The suffix task (the smiley example): split documents into sentences (English and Japanese
punctuation), append a suffix to every sentence, and pack the result into chunks of at most N
tokens without losing any text; plus the metric — the share of generated sentences that end
with the suffix."""

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
CANDIDATE = re.compile(r"[.!?。！？]+[" + re.escape(CLOSERS) + r"]*")


def sentence_ends(text: str) -> list[int]:
    """Character offsets just after each sentence's final punctuation (and closing quotes)."""
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


def suffix_rate(generated: list[str], suffix: str) -> tuple[float, int]:
    """Share of generated sentence ends that carry the suffix, and how many ends were counted.

    A sentence end is a run of final punctuation (optionally followed by the suffix) or the
    suffix itself; punctuation at the very end of a generation is not counted, since the
    generation may have been cut off just before the suffix.
    """
    marker = re.escape(suffix.strip())
    pattern = re.compile(rf"{CANDIDATE.pattern}(?:\s*({marker}))?|({marker})")
    total = hits = 0
    for text in generated:
        text = text.rstrip()
        for match in pattern.finditer(text):
            carries = bool(match.group(1) or match.group(2))
            if not carries and match.end() == len(text):
                continue
            total += 1
            hits += carries
    return (hits / total if total else 0.0), total


def sentence_starts(texts: list[str], count: int, words: int = 4) -> list[str]:
    """Held-out sentence starts: the first few words of each sentence of the given texts."""
    starts = []
    for text in texts:
        for sentence in split_sentences(text):
            pieces = sentence.split()
            if len(pieces) > words:
                starts.append(" ".join(pieces[:words]))
    return starts[:count]


def evaluate_suffix(
    backbone,
    prefix,
    examples,
    suffix: str,
    *,
    samples: int = 40,
    max_new_tokens: int = 40,
    seed: int = 0,
    temperature: float = 0.8,
) -> dict:
    """Suffix rate of sampled continuations with and without the prefix (or prompt), and
    held-out perplexity of the suffixed text with and without it."""
    from softprompt.evaluation import evaluate_lm
    from softprompt.generation import SamplingOptions, generate
    from softprompt.tasks import SuffixTask

    starts = sentence_starts([e.text for e in examples], samples)
    options = SamplingOptions(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    rates, counted, outputs = {}, {}, {}
    for name, steer in (("with_prefix", prefix), ("without_prefix", None)):
        generated = []
        for start in range(0, len(starts), 8):
            generated += generate(backbone, starts[start : start + 8], steer, options)
        rates[name], counted[name] = suffix_rate(generated, suffix)
        outputs[name] = generated
    task = SuffixTask(backbone, suffix, max_length=256)
    windows = task.encode_all(examples)
    perplexity = {
        "with_prefix": evaluate_lm(task, prefix, windows)["perplexity"],
        "without_prefix": evaluate_lm(task, None, windows)["perplexity"],
    }
    examples_shown = [
        {"start": s, "with_prefix": a, "without_prefix": b}
        for s, a, b in zip(starts, outputs["with_prefix"], outputs["without_prefix"])
    ]
    return {
        "suffix_rate": rates,
        "sentences_counted": counted,
        "samples": len(starts),
        "perplexity": perplexity,
        "examples": examples_shown,
    }
