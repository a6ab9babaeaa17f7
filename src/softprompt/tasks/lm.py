"""Next-token prediction on plain text, cut into windows that fit beside the prompt.
Metrics: loss and perplexity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from softprompt.data import Example
from softprompt.errors import ConfigError, DataError, ModelError
from softprompt.models import Backbone
from softprompt.steering.base import Steering
from softprompt.steering.forward import SteeringLike, as_steering
from softprompt.tasks.base import Task, length_batches, special_tokens


@dataclass
class LMBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


class LanguageModelingTask(Task):
    """Next-token prediction on plain text, cut into windows that fit with the prompt."""

    def __init__(self, backbone: Backbone, *, max_length: int = 256, prompt_length: int = 0):
        if backbone.kind != "causal":
            raise ModelError(f"the lm task needs a causal LM; {backbone.name} is a masked LM")
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.window = max_length - prompt_length
        if self.window < 2:
            raise ConfigError(f"task.max_length {max_length} leaves no room beside the prompt")
        self.specials_before, _ = special_tokens(self.tokenizer)

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

    def token_losses(self, steer: SteeringLike, batch: LMBatch) -> tuple[torch.Tensor, int]:
        """Summed next-token NLL over the text (first token excluded) and the token count."""
        hidden, offset = as_steering(steer).hidden(
            self.backbone, batch.input_ids, batch.attention_mask
        )
        device = hidden.device
        targets = batch.input_ids[:, 1:].to(device)
        valid = batch.attention_mask[:, 1:].to(device).bool()
        h = hidden[:, offset : offset + targets.shape[1]][valid]
        logits = self.backbone.head_logits(h)
        nll = F.cross_entropy(logits, targets[valid], reduction="sum")
        return nll, int(valid.sum())

    @classmethod
    def from_config(cls, task_config, backbone: Backbone, prompt_length: int) -> Task:
        return cls(backbone, max_length=task_config.max_length, prompt_length=prompt_length)

    def encode_split(self, examples: list[Example]) -> list[list[int]]:
        return self.encode_all(examples)

    def item_length(self, item: list[int]) -> int:
        return len(item)

    def loss(self, steering: Steering, items: list[list[int]]) -> torch.Tensor:
        nll, _ = self.token_losses(steering, self.collate(items))
        return nll

    def loss_denominator(self, items: list[list[int]]) -> float:
        return float(sum(len(w) - 1 for w in items))

    def evaluate(self, steering: Steering, encoded: list, batch_size: int = 32) -> dict:
        return evaluate_lm(self, steering, encoded, batch_size)

    def selection_metric(self, best_metric: str) -> str:
        return "loss"


@torch.no_grad()
def evaluate_lm(
    task: LanguageModelingTask,
    prompt: SteeringLike,
    windows: list[list[int]],
    batch_size: int = 16,
) -> dict[str, float]:
    """Mean next-token loss and perplexity over all windows."""
    total, count = 0.0, 0
    for batch_ids in length_batches([len(w) for w in windows], batch_size):
        nll, tokens = task.token_losses(prompt, task.collate([windows[i] for i in batch_ids]))
        total += float(nll)
        count += tokens
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}
