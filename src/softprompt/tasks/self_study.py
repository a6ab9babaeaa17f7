"""Self-study (Eyuboglu et al. 2025): a cartridge learns a corpus by context distillation.

For each chunk of the corpus (cut to fit the model's context), the frozen model with the chunk
in its context answers seed prompts ("summarise the text above", "ask a question about it and
answer it", ...): one synthetic turn each, decoded by the one decoder (softprompt.decoding),
batched and seeded. The teacher is the model with the chunk in context; its top-k
log-probabilities at every generated token are computed once and kept (in the run folder,
`self_study/<split>.safetensors`, reused on resume). The student is the model steered by the
cartridge with the seed prompt alone; the loss is the KL divergence from teacher to student over
the teacher's top k tokens, summed over the generated tokens. Dev: held-out turns (the same
corpus, other seeds), scored by the same KL per token.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field

from softprompt.data import Example
from softprompt.decoding.engine import Engine, Job
from softprompt.decoding.events import Failed, Finished
from softprompt.decoding.options import SamplingOptions, row_seeds
from softprompt.errors import ConfigError, DataError, ModelError
from softprompt.files import read_safetensors, write_safetensors_atomic
from softprompt.models import Backbone
from softprompt.progress import Progress
from softprompt.steering.base import NoSteering, Steering
from softprompt.tasks.base import Task, TaskSettings
from softprompt.text.corpus import Document, chunk_ids, read_corpus

SEED_PROMPTS = (
    "Summarise the text above in a few sentences.",
    "Ask a question about one specific detail of the text above, then answer it.",
    "A newcomer asks about the text above. Write their question and the answer from the text.",
    "List the key facts of the text above: names, numbers, dates and rules.",
    "Explain one rule or procedure from the text above step by step.",
    "Restate the most important part of the text above in your own words.",
)
CACHE_DIR = "self_study"


class SelfStudySettings(TaskSettings):
    """`task:` keys of self-study (`data` is the corpus: a text file, JSONL or a folder)."""

    type: str = "self_study"
    data: str | list[str]  # the corpus: files or folders, in order
    chunk_tokens: int = Field(1024, ge=8)
    seed_prompts: list[str] | None = None
    conversations: int = Field(8, ge=1)  # synthetic turns per chunk (train)
    dev_conversations: int = Field(4, ge=1)  # held-out turns in all (dev)
    max_new_tokens: int = Field(64, ge=2)
    temperature: float = Field(0.8, ge=0)
    top_k: int = Field(20, ge=1)
    generation_batch: int = Field(8, ge=1)
    generation_seed: int = 0


@dataclass
class Turn:
    """One synthetic turn: the student's prompt ids, the generated reply ids and the teacher's
    top-k token ids and log-probabilities at each reply token ([len(reply), k])."""

    prompt: list[int]
    reply: list[int]
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor


def topk_kl(student_logprobs: torch.Tensor, top_ids: torch.Tensor, top_logprobs: torch.Tensor):
    """Summed over positions: sum_j p_j (log p_j - log q_j) over the teacher's top k tokens j
    (p: teacher probabilities, q: the student's over the full vocabulary)."""
    picked = student_logprobs.gather(-1, top_ids.to(student_logprobs.device))
    teacher = top_logprobs.to(student_logprobs.device)
    return (teacher.exp() * (teacher - picked)).sum()


class SelfStudyTask(Task):
    """Context distillation of a corpus into a cartridge (see the module's docstring)."""

    settings = SelfStudySettings

    def __init__(self, backbone: Backbone, config: SelfStudySettings, prompt_length: int = 0):
        if backbone.kind != "causal":
            raise ModelError(f"self-study needs a causal LM; {backbone.name} is a masked LM")
        self.backbone, self.config, self.tokenizer = backbone, config, backbone.tokenizer
        self.prompts = list(
            config.seed_prompts if config.seed_prompts is not None else SEED_PROMPTS
        )
        if not self.prompts or not all(p.strip() for p in self.prompts):
            raise ConfigError("task.seed_prompts must list at least one non-empty prompt")
        model_config = backbone.model.config.get_text_config(decoder=True)
        self.context = int(getattr(model_config, "max_position_embeddings", 2048))
        self.prompt_ids = [self.tokenizer(p + "\n").input_ids for p in self.prompts]
        self.separator = self.tokenizer("\n\n", add_special_tokens=False).input_ids
        self.progress = True  # progress lines while turns are decoded (run_items sets it)

    @classmethod
    def from_config(cls, task_config, backbone: Backbone, prompt_length: int) -> Task:
        return cls(backbone, task_config, prompt_length)

    # --- the corpus and its turns ---------------------------------------------------------

    def chunk_size(self) -> int:
        """Tokens of corpus per chunk: `chunk_tokens`, or less where the context needs it."""
        room = max(len(ids) for ids in self.prompt_ids) + len(self.separator)
        size = min(self.config.chunk_tokens, self.context - room - self.config.max_new_tokens)
        if size < 8:
            raise ConfigError(
                f"model {self.backbone.name} takes {self.context} positions: no room for a chunk "
                "beside the seed prompt and the reply; lower task.max_new_tokens"
            )
        return size

    def chunks(self, documents: list[Document]) -> list[list[int]]:
        size, chunks = self.chunk_size(), []
        for doc in documents:
            chunks += chunk_ids(self.tokenizer(doc.text, add_special_tokens=False).input_ids, size)
        if not chunks:
            raise DataError(f"corpus {self.config.data} gives no tokens")
        return chunks

    def plan(self, chunks: list[list[int]], split: str) -> list[tuple[int, int]]:
        """(chunk, seed prompt) of every turn of a split, drawn with the generation seed."""
        rng = random.Random(f"{self.config.generation_seed}:{split}")
        if split == "train":
            order = [c for c in range(len(chunks)) for _ in range(self.config.conversations)]
        else:
            order = [j % len(chunks) for j in range(self.config.dev_conversations)]
        return [(c, rng.randrange(len(self.prompts))) for c in order]

    def synthesize(self, chunks: list[list[int]], split: str) -> list[Turn]:
        """The split's turns: replies decoded with the chunk in context, then the teacher's
        top-k log-probabilities at each reply token."""
        plan = self.plan(chunks, split)
        contexts = [self.teacher_context(chunks[c], p) for c, p in plan]
        replies = self.generate(contexts, split)
        kept = [(i, r) for i, r in enumerate(replies) if r]
        if not kept:
            raise DataError("self-study generated no reply tokens; raise task.max_new_tokens")
        tops = self.teacher_topk([contexts[i] for i, _ in kept], [r for _, r in kept])
        return [
            Turn(self.prompt_ids[plan[i][1]], reply, ids, lps)
            for (i, reply), (ids, lps) in zip(kept, tops)
        ]

    def teacher_context(self, chunk: list[int], prompt: int) -> list[int]:
        start = self.tokenizer("", add_special_tokens=True).input_ids
        return (
            start
            + chunk
            + self.separator
            + self.tokenizer(self.prompts[prompt] + "\n", add_special_tokens=False).input_ids
        )

    def generate(self, contexts: list[list[int]], split: str) -> list[list[int]]:
        """Each context's reply (token ids, no end-of-text) through the decoding engine."""
        config = self.config
        options = SamplingOptions(
            max_new_tokens=config.max_new_tokens,
            greedy=config.temperature == 0,
            temperature=config.temperature or 1.0,
            seed=config.generation_seed,
        )
        seeds = row_seeds(
            config.generation_seed, [split] * len(contexts), list(range(len(contexts)))
        )
        replies: list[list[int]] = []
        size = config.generation_batch
        with Progress(
            f"self-study {split} turns", len(contexts), unit="turns", enabled=self.progress
        ) as progress:
            for start in range(0, len(contexts), size):
                batch = zip(contexts[start : start + size], seeds[start : start + size])
                replies += _decode(self.backbone, batch, options)
                progress.update(len(replies))
        return replies

    @torch.no_grad()
    def teacher_topk(self, contexts: list[list[int]], replies: list[list[int]]) -> list[tuple]:
        """The teacher's top-k (ids, log-probabilities) at every reply token."""
        out = []
        size = self.config.generation_batch
        for start in range(0, len(contexts), size):
            rows = [
                c + r for c, r in zip(contexts[start : start + size], replies[start : start + size])
            ]
            starts = [len(c) for c in contexts[start : start + size]]
            logprobs = self.reply_logprobs(NoSteering(), rows, starts)
            for lp in logprobs:
                top = lp.topk(self.config.top_k, dim=-1)
                out.append((top.indices.cpu(), top.values.float().cpu()))
        return out

    def reply_logprobs(self, steering: Steering, rows: list[list[int]], starts: list[int]):
        """Per row, log-probabilities [reply tokens, vocab] predicting row[start:]."""
        return continuation_logprobs(self.backbone, steering, rows, starts)

    # --- the run's items, kept in the run folder ----------------------------------------

    def run_items(
        self,
        split: str,
        examples: Callable[[], list],
        run_dir: Path | None,
        progress: bool = True,
    ) -> list:
        self.progress = progress
        documents = read_corpus(self.config.data, self.config.text_field)
        key = self.fingerprint(documents, split)
        path = run_dir / CACHE_DIR / f"{split}.safetensors" if run_dir is not None else None
        if path is not None and path.is_file():
            turns = read_turns(path, key)
            if turns is not None:
                return turns
        turns = self.synthesize(self.chunks(documents), split)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_turns(turns, key, path)
        return turns

    def fingerprint(self, documents: list[Document], split: str) -> str:
        """What the turns depend on: the corpus, the task settings, the model and the split."""
        digest = hashlib.sha256()
        for doc in documents:
            digest.update(doc.text.encode("utf-8"))
        settings = self.config.model_dump(mode="json")
        digest.update(json.dumps([settings, self.backbone.name, split], sort_keys=True).encode())
        return digest.hexdigest()

    def encode_split(self, examples: list[Example]) -> list[Turn]:
        """Turns about the examples' texts (evaluation of a cartridge on a corpus split)."""
        documents = [Document(e.where, e.text) for e in examples]
        return self.synthesize(self.chunks(documents), "dev")

    # --- loss and metrics ---------------------------------------------------------------

    def item_length(self, item: Turn) -> int:
        return len(item.prompt) + len(item.reply)

    def loss(self, steering: Steering, items: list[Turn]) -> torch.Tensor:
        rows = [t.prompt + t.reply for t in items]
        logprobs = self.reply_logprobs(steering, rows, [len(t.prompt) for t in items])
        return sum(topk_kl(lp, t.top_ids, t.top_logprobs) for lp, t in zip(logprobs, items))

    def loss_denominator(self, items: list[Turn]) -> float:
        return float(sum(len(t.reply) for t in items))

    @torch.no_grad()
    def evaluate(self, steering: Steering, encoded: list, batch_size: int = 32) -> dict:
        total = 0.0
        for start in range(0, len(encoded), batch_size):
            total += float(self.loss(steering, encoded[start : start + batch_size]))
        tokens = self.loss_denominator(encoded)
        return {"loss": total / max(tokens, 1.0), "tokens": int(tokens), "turns": len(encoded)}

    def selection_metric(self, best_metric: str) -> str:
        return "loss"


def continuation_logprobs(
    backbone: Backbone, steering: Steering, rows: list[list[int]], starts: list[int]
) -> list[torch.Tensor]:
    """Per row of token ids under `steering`, the log-probabilities [len(row) - start, vocab]
    of the tokens row[start:] (each predicted from the tokens before it)."""
    width = max(len(r) for r in rows)
    pad = backbone.tokenizer.pad_token_id or 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
    hidden, offset = steering.hidden(backbone, ids, mask)
    result = []
    for index, (row, start) in enumerate(zip(rows, starts)):
        h = hidden[index, offset + start - 1 : offset + len(row) - 1]
        result.append(torch.log_softmax(backbone.head_logits(h).float(), dim=-1))
    return result


def write_turns(turns: list[Turn], key: str, path: Path) -> None:
    """The turns as one safetensors file (ids flat, lengths per turn), tagged with `key`."""
    tensors = {
        "ids": torch.tensor([i for t in turns for i in t.prompt + t.reply], dtype=torch.long),
        "lengths": torch.tensor([[len(t.prompt), len(t.reply)] for t in turns], dtype=torch.long),
        "top_ids": torch.cat([t.top_ids for t in turns]).long().contiguous(),
        "top_logprobs": torch.cat([t.top_logprobs for t in turns]).float().contiguous(),
    }
    write_safetensors_atomic(tensors, {"fingerprint": key}, path)


def read_turns(path: Path, key: str) -> list[Turn] | None:
    """The turns kept at `path`, or None when they were made for something else."""
    tensors, meta = read_safetensors(path)
    if meta.get("fingerprint") != key:
        return None
    ids, turns, at, row = tensors["ids"].tolist(), [], 0, 0
    for prompt_len, reply_len in tensors["lengths"].tolist():
        prompt, reply = (
            ids[at : at + prompt_len],
            ids[at + prompt_len : at + prompt_len + reply_len],
        )
        top = slice(row, row + reply_len)
        turns.append(Turn(prompt, reply, tensors["top_ids"][top], tensors["top_logprobs"][top]))
        at, row = at + prompt_len + reply_len, row + reply_len
    return turns


def _decode(backbone, batch, options: SamplingOptions) -> list[list[int]]:
    """Each (context, seed)'s reply as token ids, decoded together on the engine."""
    ended: dict[int, Finished | Failed] = {}
    jobs = []
    for index, (ids, seed) in enumerate(batch):

        def emit(event, index=index) -> None:
            if isinstance(event, Finished | Failed):
                ended[index] = event

        jobs.append(Job(NoSteering(), ids, options, emit, seed=seed))
    Engine(backbone, max_batch=len(jobs), queue_size=1).run_jobs(jobs)
    failed = [e.error for e in ended.values() if isinstance(e, Failed)]
    if failed:
        raise failed[0]
    return [list(ended[index].token_ids) for index in range(len(jobs))]
