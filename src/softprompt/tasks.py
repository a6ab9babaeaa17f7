"""Tasks: how examples become token sequences for one model, and how a prompt is scored on them.

Classification is language modelling at a label slot: a causal LM predicts the label word after
the template, a masked LM fills [MASK] tokens at the slot. Only the hidden states at the label
positions go through the LM head, and with the verbalizer loss only the label words' rows of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from softprompt.data import DataSpec, Example
from softprompt.errors import ConfigError, DataError, ModelError
from softprompt.methods.prefix import PrefixKV, keep_cache_when_checkpointing, prefix_cache
from softprompt.models.backbone import Backbone
from softprompt.steering.packing import (
    attention_mask_for,
    pack,
    packed_positions,
    plan_packing,
    plan_prompt_packing,
    unpack,
)

PLACEHOLDER = re.compile(r"\{(\w*)\}")
KNOWN_PLACEHOLDERS = ("text", "text_b", "label")


def check_template(template: str, needs_text_b: bool = False) -> None:
    """Fail early on templates that cannot be rendered as intended."""
    names = PLACEHOLDER.findall(template)
    unknown = sorted({n for n in names if n not in KNOWN_PLACEHOLDERS})
    if unknown:
        raise ConfigError(
            f"template has unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
            "use {text}, {text_b} and optionally {label}"
        )
    if "text" not in names:
        raise ConfigError(f"template {template!r} has no {{text}} placeholder for the input text")
    for name in KNOWN_PLACEHOLDERS:
        if names.count(name) > 1:
            raise ConfigError(f"template uses {{{name}}} more than once")
    if needs_text_b and "text_b" not in names:
        raise ConfigError("task.text_b_field is set but the template has no {text_b} placeholder")


def _fill(template: str, text: str, text_b: str | None) -> str:
    return template.replace("{text}", text).replace("{text_b}", text_b or "")


@dataclass
class EncodedExample:
    """Token rows of one example: one row if all label words are one token, else one per class."""

    rows: list[tuple[list[int], list[int], list[int]]]  # (input_ids, positions, target_ids)
    label: int


@dataclass
class ClassBatch:
    """A padded batch of classification rows, ready for the model."""

    input_ids: torch.Tensor  # [N, T]
    attention_mask: torch.Tensor  # [N, T]
    positions: torch.Tensor  # [N, K] label positions (token coordinates, no prompt)
    targets: torch.Tensor  # [N, K] label-word token ids (shared mode: [N, C] at one position)
    target_mask: torch.Tensor  # [N, K]
    row_example: torch.Tensor  # [N]
    row_class: torch.Tensor  # [N]
    labels: torch.Tensor  # [B]
    shared: bool

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (BOS / [CLS], [SEP])."""
    plain = tokenizer("x", add_special_tokens=False).input_ids
    full = tokenizer("x", add_special_tokens=True).input_ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


class ClassificationTask:
    """Template + verbalizer classification for one backbone."""

    def __init__(
        self,
        backbone: Backbone,
        template: str,
        verbalizer: dict[str, str],
        *,
        loss: str = "verbalizer",
        max_length: int = 256,
        prompt_length: int = 0,
        needs_text_b: bool = False,
    ) -> None:
        check_template(template, needs_text_b)
        if not verbalizer:
            raise ConfigError("a classification task needs a verbalizer (label: word)")
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.labels = list(verbalizer)
        self.verbalizer = dict(verbalizer)
        self.loss_kind = loss
        self.max_length = max_length
        self.prompt_length = prompt_length
        before, _, after = template.partition("{label}")
        if backbone.kind == "causal" and after.strip():
            raise ConfigError("for a causal LM, {label} must end the template (or be left out)")
        self.before, self.after = before, after
        self.word_ids = [self._content_ids(word) for word in verbalizer.values()]
        for label, ids in zip(self.labels, self.word_ids):
            if not ids:
                raise ConfigError(f"verbalizer word for {label!r} has no tokens")
        if backbone.kind == "masked" and self.tokenizer.mask_token_id is None:
            raise ModelError(f"model {backbone.name} has no mask token; a masked task needs one")
        self.shared = all(len(ids) == 1 for ids in self.word_ids)
        self.class_token_ids = torch.tensor([ids[0] for ids in self.word_ids])
        self.specials_before, self.specials_after = _special_tokens(self.tokenizer)
        if backbone.kind == "causal":
            self.specials_after = []

    def _content_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def label_index(self, example: Example) -> int:
        if example.label not in self.verbalizer:
            raise DataError(
                f"{example.where}: label {example.label!r} is not in the verbalizer "
                f"({', '.join(self.labels)}); add it or fix the data"
            )
        return self.labels.index(example.label)

    def encode(self, example: Example, with_label: bool = True) -> EncodedExample:
        """Token rows for one example, the text truncated so prompt and label slot fit."""
        label = self.label_index(example) if with_label else -1
        words = self.word_ids if not self.shared else [self.word_ids[0]]
        longest = max(len(ids) for ids in words)
        text, text_b = example.text, example.text_b
        for _ in range(6):
            before = self._content_ids(_fill(self.before, text, text_b))
            after = self._content_ids(_fill(self.after, text, text_b))
            fixed = len(self.specials_before) + len(self.specials_after) + len(after)
            total = self.prompt_length + fixed + len(before) + longest
            excess = total - self.max_length
            if excess <= 0:
                break
            text, text_b = self._shorten(text, text_b, excess, example)
        else:
            raise DataError(f"{example.where}: cannot fit the text into max_length")
        rows = [self._row(before, after, ids) for ids in words]
        if self.shared:
            ids, positions, _ = rows[0]
            rows = [(ids, positions, self.class_token_ids.tolist())]
        return EncodedExample(rows=rows, label=label)

    def _shorten(self, text: str, text_b: str | None, excess: int, example: Example):
        """Drop `excess` tokens (plus a margin) from the longer of the two texts."""
        target_b = text_b is not None and len(text_b) > len(text)
        ids = self._content_ids(text_b if target_b else text)
        if len(ids) <= 1:
            raise DataError(
                f"{example.where}: the template, prompt and label need more than max_length "
                f"({self.max_length}) tokens; raise task.max_length or shorten the template"
            )
        keep = max(1, len(ids) - excess - 2)
        shorter = self.tokenizer.decode(ids[:keep])
        return (text, shorter) if target_b else (shorter, text_b)

    def _row(self, before: list[int], after: list[int], word: list[int]):
        if self.backbone.kind == "causal":
            ids = self.specials_before + before + word[:-1]
            start = len(self.specials_before) + len(before) - 1
            positions = list(range(start, start + len(word)))
        else:
            mask = [self.tokenizer.mask_token_id] * len(word)
            head = self.specials_before + before
            ids = head + mask + after + self.specials_after
            positions = list(range(len(head), len(head) + len(word)))
        return ids, positions, list(word)

    def collate(self, encoded: list[EncodedExample]) -> ClassBatch:
        rows = [(row, i, c) for i, enc in enumerate(encoded) for c, row in enumerate(enc.rows)]
        width = max(len(ids) for (ids, _, _), _, _ in rows)
        depth = max(len(t) for (_, _, t), _, _ in rows)
        pad = self.tokenizer.pad_token_id
        n = len(rows)
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        positions = torch.zeros((n, depth if not self.shared else 1), dtype=torch.long)
        targets = torch.zeros((n, depth), dtype=torch.long)
        target_mask = torch.zeros((n, depth), dtype=torch.bool)
        for r, ((ids, pos, tgt), _, _) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            mask[r, : len(ids)] = 1
            positions[r, : len(pos)] = torch.tensor(pos)
            targets[r, : len(tgt)] = torch.tensor(tgt)
            target_mask[r, : len(tgt)] = True
        return ClassBatch(
            input_ids=input_ids,
            attention_mask=mask,
            positions=positions,
            targets=targets,
            target_mask=target_mask,
            row_example=torch.tensor([i for _, i, _ in rows]),
            row_class=torch.tensor([c for _, _, c in rows]),
            labels=torch.tensor([enc.label for enc in encoded]),
            shared=self.shared,
        )

    def class_scores(
        self, prompt: torch.Tensor | None, batch: ClassBatch, full_vocab: bool | None = None
    ) -> torch.Tensor:
        """Per-class scores [B, C]: label-word log-probabilities (full vocabulary), or in the
        one-token verbalizer case with `full_vocab=False`, the label words' raw logits.

        `prompt` is [L, d], or [B, L, d] for a different prompt per example."""
        if full_vocab is None:
            full_vocab = self.loss_kind == "vocab"
        if getattr(prompt, "ndim", 0) == 3:  # one prompt per example -> per row
            prompt = prompt[batch.row_example.to(prompt.device)]
        elif isinstance(prompt, PrefixKV) and prompt.per_row:
            rows = batch.row_example.to(prompt.keys.device)
            prompt = PrefixKV(prompt.keys[:, rows], prompt.values[:, rows])
        hidden, offset = prompted_hidden(
            self.backbone, prompt, batch.input_ids, batch.attention_mask, read=batch.positions
        )
        device = hidden.device
        rows = torch.arange(hidden.shape[0], device=device)
        if batch.shared:
            h = hidden[rows, offset + batch.positions[:, 0].to(device)]
            class_ids = self.class_token_ids.to(device)
            if full_vocab:
                return self.backbone.vocab_logprobs(h, class_ids.expand(h.shape[0], -1))
            return self.backbone.head_logits(h, class_ids)
        h = hidden[rows[:, None], offset + batch.positions.to(device)]
        targets = batch.targets.to(device)[..., None]
        token_logp = self.backbone.vocab_logprobs(h, targets).squeeze(-1)
        row_scores = (token_logp * batch.target_mask.to(device)).sum(-1)
        scores = torch.full((batch.size, len(self.labels)), float("-inf"), device=device)
        scores[batch.row_example.to(device), batch.row_class.to(device)] = row_scores
        return scores

    def losses(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example loss: cross-entropy over the labels, or the label word's full-vocabulary
        negative log-likelihood (the paper's loss)."""
        labels = labels.to(scores.device)
        if self.loss_kind == "vocab":
            return -scores.gather(1, labels[:, None]).squeeze(1)
        return F.cross_entropy(scores, labels, reduction="none")


def prompted_hidden(
    backbone: Backbone,
    prompt: torch.Tensor | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    read: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Hidden states with the soft prompt prepended (mask 1 over it); returns them and L.

    `prompt` is one [L, d] prompt for every row, or [N, L, d]: a prompt per row. `read`: the
    token positions [N, K] the caller will read; only those states are final (the last
    layer's MLP skips the others). None: all.
    """
    device = backbone.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    embeds = backbone.embed(input_ids)
    # a GPU step is bound by kernel launches, not arithmetic: the cut would cost, not pay
    read = read.to(device) if read is not None and device.type == "cpu" else None
    if prompt is None:
        return backbone.body(embeds, attention_mask, read=_flat(read, embeds.shape[1], 0)), 0
    if isinstance(prompt, PrefixKV):
        return _prefixed_hidden(backbone, prompt, embeds, attention_mask, read), 0
    n, length = input_ids.shape[0], prompt.shape[-2]
    soft = prompt.to(device=device, dtype=embeds.dtype)
    if backbone.kind == "causal" and soft.ndim == 2 and device.type == "cpu":
        # the prompt once per packed row, the texts after it: fewer positions, which is what a
        # CPU step costs; on a GPU a small model's step costs kernel launches, so there the
        # rows stay [prompt; text] (BENCHMARKS.md, "On a GPU")
        return _prompt_packed_hidden(backbone, soft, embeds, attention_mask, read), 0
    soft = soft.expand(n, -1, -1) if soft.ndim == 3 else soft.unsqueeze(0).expand(n, -1, -1)
    embeds = torch.cat([soft, embeds], dim=1)
    ones = torch.ones((n, length), dtype=attention_mask.dtype, device=device)
    mask = torch.cat([ones, attention_mask], dim=1)
    return backbone.body(embeds, mask, read=_flat(read, embeds.shape[1], length)), length


def _flat(read: torch.Tensor | None, width: int, offset: int) -> torch.Tensor | None:
    """Flat positions (row * width + column) of token positions [N, K] shifted by `offset`."""
    if read is None:
        return None
    rows = torch.arange(read.shape[0], device=read.device)[:, None]
    return (rows * width + offset + read).flatten().unique()


def _prompt_packed_hidden(
    backbone: Backbone, prompt, embeds, attention_mask, read=None
) -> torch.Tensor:
    """Hidden states of the texts, run as rows of [prompt | text | text ...] in one pass
    (softprompt.steering.packing.plan_prompt_packing); returned in the batch's padded shape."""
    length = prompt.shape[0]
    packing = plan_prompt_packing(attention_mask, length)
    row_width = packing.mask.shape[-1]
    texts = embeds.new_zeros((packing.rows, row_width, embeds.shape[-1]))
    texts[packing.target] = embeds[packing.source]
    rows = torch.cat([prompt.unsqueeze(0).expand(packing.rows, -1, -1), texts[:, length:]], 1)
    mask = attention_mask_for(backbone.model, packing.mask, embeds.dtype)
    keep = None if read is None else packed_positions(packing, read, row_width)
    hidden = backbone.body(
        rows, mask, position_ids=packing.positions, segments=packing.segments, read=keep
    )
    return unpack(hidden, packing, embeds.shape[0])[:, : embeds.shape[1]]


def prompt_states(backbone: Backbone, prompt: torch.Tensor) -> PrefixKV:
    """The keys/values a soft prompt [L, d] leaves at every layer of a causal model
    ([layers, kv_heads, L, head_dim] each); for several prompts [P, L, d], one set per prompt
    ([layers, P, kv_heads, L, head_dim]).

    They depend only on the prompt (it comes first and attends to nothing after it), so one
    pass serves many texts: exact importance runs each ablated prompt once this way and the
    texts after it as after a prefix."""
    from transformers import DynamicCache

    many = prompt.ndim == 3
    prompts = prompt if many else prompt.unsqueeze(0)
    cache = DynamicCache(config=backbone.model.config)
    ones = torch.ones(prompts.shape[:2], dtype=torch.long, device=prompt.device)
    backbone.body(prompts, ones, past_key_values=cache)
    keys = torch.stack([layer.keys if many else layer.keys[0] for layer in cache.layers])
    values = torch.stack([layer.values if many else layer.values[0] for layer in cache.layers])
    return PrefixKV(keys, values)


def _prefixed_hidden(backbone: Backbone, prefix: PrefixKV, embeds, attention_mask, read=None):
    """Hidden states of the text after a key/value prefix (positions start at L)."""
    model = backbone.model
    if getattr(model, "is_activation_checkpointing", False):
        keep_cache_when_checkpointing(model)
    batch, device = embeds.shape[0], embeds.device
    if device.type == "cpu" and not prefix.per_row:
        packing = plan_packing(attention_mask, prefix.length)
        if packing is not None:
            return _packed_hidden(backbone, prefix, embeds, packing, read)
    cache = prefix_cache(
        model, prefix.keys.to(device), prefix.values.to(device), batch, frozen=True
    )
    ones = torch.ones((batch, prefix.length), dtype=attention_mask.dtype, device=device)
    mask = torch.cat([ones, attention_mask], dim=1)
    keep = _flat(read, embeds.shape[1], 0)
    return backbone.body(embeds, mask, past_key_values=cache, read=keep)


def _packed_hidden(
    backbone: Backbone, prefix: PrefixKV, embeds, packing, read=None
) -> torch.Tensor:
    """`_prefixed_hidden` with the texts packed several to a row (softprompt.steering.packing)."""
    model, device = backbone.model, embeds.device
    cache = prefix_cache(
        model, prefix.keys.to(device), prefix.values.to(device), packing.rows, frozen=True
    )
    width = embeds.shape[1]
    mask = attention_mask_for(model, packing.mask, embeds.dtype)
    keep = None if read is None else packed_positions(packing, read, width)
    hidden = backbone.body(
        pack(embeds, packing, width),
        mask,
        past_key_values=cache,
        position_ids=packing.positions,
        segments=packing.segments,
        read=keep,
    )
    return unpack(hidden, packing, embeds.shape[0])


@dataclass
class LMBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


class LanguageModelingTask:
    """Next-token prediction on plain text, cut into windows that fit with the prompt."""

    def __init__(self, backbone: Backbone, *, max_length: int = 256, prompt_length: int = 0):
        if backbone.kind != "causal":
            raise ModelError(f"the lm task needs a causal LM; {backbone.name} is a masked LM")
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.window = max_length - prompt_length
        if self.window < 2:
            raise ConfigError(f"task.max_length {max_length} leaves no room beside the prompt")
        self.specials_before, _ = _special_tokens(self.tokenizer)

    def encode_all(self, examples: list[Example]) -> list[list[int]]:
        """Windows of at most `window` tokens covering every document; none is dropped."""
        windows = []
        for example in examples:
            ids = (
                self.specials_before
                + self.tokenizer(example.text, add_special_tokens=False).input_ids
            )
            for start in range(0, len(ids), self.window):
                chunk = ids[start : start + self.window]
                if len(chunk) >= 2:
                    windows.append(chunk)
        if not windows:
            raise DataError("the lm task found no text with at least two tokens")
        return windows

    def collate(self, windows: list[list[int]]) -> LMBatch:
        width = max(len(w) for w in windows)
        ids = torch.full((len(windows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, window in enumerate(windows):
            ids[r, : len(window)] = torch.tensor(window)
            mask[r, : len(window)] = 1
        return LMBatch(ids, mask)

    def token_losses(self, prompt: torch.Tensor | None, batch: LMBatch) -> tuple[torch.Tensor, int]:
        """Summed next-token NLL over the text (first token excluded) and the token count."""
        hidden, offset = prompted_hidden(
            self.backbone, prompt, batch.input_ids, batch.attention_mask
        )
        device = hidden.device
        targets = batch.input_ids[:, 1:].to(device)
        valid = batch.attention_mask[:, 1:].to(device).bool()
        h = hidden[:, offset : offset + targets.shape[1]][valid]
        logits = self.backbone.head_logits(h)
        nll = F.cross_entropy(logits, targets[valid], reduction="sum")
        return nll, int(valid.sum())


class SuffixTask(LanguageModelingTask):
    """The smiley example: every sentence gets `suffix`, documents are packed into chunks of
    whole sentences that fit the window (none dropped), LM loss on them."""

    def __init__(self, backbone: Backbone, suffix: str, **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        if not suffix.strip():
            raise ConfigError("task.suffix must not be empty")
        self.suffix = suffix

    def encode_all(self, examples: list[Example]) -> list[list[int]]:
        from softprompt.suffix import add_suffix, pack

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


def data_spec(task_config) -> DataSpec:
    """The data-reading part of a task config."""

    return DataSpec(
        source=task_config.data,
        text_field=task_config.text_field,
        label_field=task_config.label_field if task_config.type == "classification" else None,
        text_b_field=task_config.text_b_field,
        dev_fraction=task_config.dev_fraction,
        test_fraction=task_config.test_fraction,
        split_seed=task_config.split_seed,
        hf_config=task_config.hf_config,
        hf_splits=tuple(task_config.hf_splits.items()),
        max_examples=task_config.max_examples,
    )


def build_task(task_config, backbone: Backbone, prompt_length: int):
    """The task object for one backbone, from a validated task config."""
    if task_config.type == "classification":
        return ClassificationTask(
            backbone,
            task_config.template,
            task_config.verbalizer,
            loss=task_config.loss,
            max_length=task_config.max_length,
            prompt_length=prompt_length,
            needs_text_b=task_config.text_b_field is not None,
        )
    if task_config.type == "lm":
        return LanguageModelingTask(
            backbone, max_length=task_config.max_length, prompt_length=prompt_length
        )
    return SuffixTask(
        backbone,
        task_config.suffix,
        max_length=task_config.max_length,
        prompt_length=prompt_length,
    )


def encode_examples(task, examples: list[Example]) -> list:
    """Encode a split once, up front, for the given task."""
    if isinstance(task, ClassificationTask):
        return [task.encode(example) for example in examples]
    return task.encode_all(examples)
