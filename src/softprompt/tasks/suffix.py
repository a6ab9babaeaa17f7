"""The smiley example (the prefix-tuning seed): every sentence of the training text gets a
suffix (default " 😃"); documents are packed into chunks of whole sentences that fit the
window (none dropped), with the LM loss on them. What `evaluate` reports is the metric that
matters: the share of generated sentence ends that carry the suffix, with and without the
steering."""

from __future__ import annotations

import re

from softprompt.data import Example
from softprompt.errors import ConfigError, DataError
from softprompt.generation import SamplingOptions, generate
from softprompt.models import Backbone
from softprompt.steering.base import NoSteering, Steering
from softprompt.tasks.base import Task, TaskSettings
from softprompt.tasks.lm import LanguageModelingTask, evaluate_lm
from softprompt.text.sentences import CANDIDATE, add_suffix, pack, split_sentences


class SuffixSettings(TaskSettings):
    """A suffix task's key: the suffix every sentence should end with."""

    suffix: str = " 😃"


class SuffixTask(LanguageModelingTask):
    """The smiley example: every sentence gets `suffix`, documents are packed into chunks of
    whole sentences that fit the window (none dropped), LM loss on them."""

    settings = SuffixSettings

    def __init__(self, backbone: Backbone, suffix: str, **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        if not suffix.strip():
            raise ConfigError("task.suffix must not be empty")
        self.suffix = suffix

    def encode_all(self, examples: list[Example]) -> list[list[int]]:

        windows = []
        room = self.window - len(self.specials_before)
        for example in examples:
            for chunk in pack(self.tokenizer, add_suffix(example.text, self.suffix), room):
                ids = self.tokenizer(chunk, add_special_tokens=False).input_ids[:room]
                if len(ids) >= 1:
                    windows.append(self.specials_before + ids)
        windows = [w for w in windows if len(w) >= 2]
        if not windows:
            raise DataError("the suffix task found no text with at least two tokens")
        return windows

    @classmethod
    def from_config(cls, task_config, backbone: Backbone, prompt_length: int) -> Task:
        return cls(
            backbone,
            task_config.suffix,
            max_length=task_config.max_length,
            prompt_length=prompt_length,
        )

    def report(self, steering: Steering, examples: list[Example], **options) -> dict:
        return evaluate_suffix(
            self.backbone, steering, examples, self.suffix, samples=options.get("samples", 40)
        )


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


MIN_STARTS = 10  # fewer sentence starts than this give no rate worth reporting
START_CHARACTERS = 8  # a start in a language written without spaces (Japanese, Chinese)


def sentence_starts(texts: list[str], count: int | None = None, words: int = 4) -> list[str]:
    """Held-out sentence starts: the first `words` words of each sentence that has more; in a
    sentence written without spaces, its first START_CHARACTERS characters when it has at
    least twice as many (the first `count`, or all)."""
    starts = []
    for text in texts:
        for sentence in split_sentences(text):
            pieces = sentence.split()
            if len(pieces) > words:
                starts.append(" ".join(pieces[:words]))
            elif len(pieces) == 1 and len(sentence) >= 2 * START_CHARACTERS:
                starts.append(sentence[:START_CHARACTERS])
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
    starts = sentence_starts([e.text for e in examples], samples)
    if len(starts) < min(MIN_STARTS, samples):
        raise DataError(
            f"the suffix rate needs at least {min(MIN_STARTS, samples)} held-out sentence "
            f"starts, but the split has {len(starts)} (a start is the first {4} words of a "
            f"sentence with more, or the first {START_CHARACTERS} characters of a sentence "
            f"without spaces of at least {2 * START_CHARACTERS}); give more documents"
        )
    options = SamplingOptions(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    rates, counted, outputs = {}, {}, {}
    for name, steer in (("with_prefix", prefix), ("without_prefix", NoSteering())):
        generated = []
        for start in range(0, len(starts), 8):
            generated += generate(backbone, starts[start : start + 8], steer, options)
        rates[name], counted[name] = suffix_rate(generated, suffix)
        outputs[name] = generated
    task = SuffixTask(backbone, suffix, max_length=256)
    windows = task.encode_all(examples)
    perplexity = {
        "with_prefix": evaluate_lm(task, prefix, windows)["perplexity"],
        "without_prefix": evaluate_lm(task, NoSteering(), windows)["perplexity"],
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
