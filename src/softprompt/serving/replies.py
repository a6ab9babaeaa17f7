"""The response bodies of the OpenAI-compatible API: choices, streamed chunks and their
log-probabilities, in the completions shape (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`) and in the chat shape (`content: [{token, logprob, bytes, top_logprobs}]`)."""

from __future__ import annotations

from dataclasses import dataclass

from softprompt.decoding.events import Finished
from softprompt.decoding.logprobs import TokenLogprob
from softprompt.decoding.text import TokenOffsets, token_offsets


@dataclass(frozen=True)
class Reply:
    """What a route answers with, for every choice: its kind ("text" or "chat"), its id and
    time, the adapter's name, and whether log-probabilities are asked for (`logprobs`) and
    the prompt echoed (`echo`, completions only)."""

    kind: str
    ident: str
    created: int
    model: str
    logprobs: bool = False
    echo: bool = False

    def choice(
        self, index: int, result: Finished, tokenizer, prompt_text: str, prompt_ids: list[int]
    ) -> dict:
        """One choice of a whole (not streamed) reply to a prompt (its text and ids)."""
        tokens = result.tokens or []
        if self.kind == "chat":
            logprobs = {"content": chat_logprobs(tokens, tokenizer), "refusal": None}
            return {
                "index": index,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": logprobs if self.logprobs else None,
                "finish_reason": result.finish_reason,
            }
        text = result.text
        prompt_scores = result.prompt_logprobs if self.echo else None
        if self.echo:
            text = prompt_text + text
        logprobs = None
        if self.logprobs:
            start = len(prompt_text) if self.echo else 0
            offsets = TokenOffsets(tokenizer, prompt_ids, start)
            logprobs = completion_logprobs(tokens, tokenizer, prompt_scores, offsets)
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": result.finish_reason,
        }

    def body(self, choices: list[dict], usage: dict) -> dict:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {**self._envelope(obj, choices), "usage": usage}

    def chunk(
        self,
        index: int,
        text: str,
        reason: str | None,
        tokens=(),
        tokenizer=None,
        offsets: TokenOffsets | None = None,
    ) -> dict:
        """One streamed chunk: a choice's piece of text (and its tokens' log-probabilities,
        placed in the choice's text by the choice's `offsets`), or its last chunk with the
        finish reason."""
        if self.kind == "chat":
            delta = {"role": "assistant", "content": text} if text else {}
            choice = {"index": index, "delta": delta, "finish_reason": reason}
            if self.logprobs:
                choice["logprobs"] = {"content": chat_logprobs(tokens, tokenizer)}
            return self._envelope("chat.completion.chunk", [choice])
        logprobs = None
        if self.logprobs:
            logprobs = completion_logprobs(tokens, tokenizer, None, offsets)
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
        return self._envelope("text_completion", [choice])

    def echo_chunk(self, index: int, prompt_text: str, scores, tokenizer) -> dict:
        """The first chunk of an echoing stream: the prompt (with its log-probabilities)."""
        logprobs = None
        if self.logprobs:
            logprobs = completion_logprobs([], tokenizer, scores, None)
        choice = {"index": index, "text": prompt_text, "logprobs": logprobs, "finish_reason": None}
        return self._envelope("text_completion", [choice])

    def usage_chunk(self, usage: dict) -> dict:
        kind = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._envelope(kind, []), "usage": usage}

    def _envelope(self, obj: str, choices: list[dict]) -> dict:
        return {
            "id": self.ident,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }


def token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token])


def completion_logprobs(
    tokens: list[TokenLogprob],
    tokenizer,
    prompt_scores: list[TokenLogprob] | None,
    offsets: TokenOffsets | None,
) -> dict:
    """The completions shape for generated `tokens`, after the echoed prompt's tokens when
    `prompt_scores` is given (the first has no log-probability: null). Offsets count
    characters into the choice's text, which begins with the prompt when it is echoed; the
    generated tokens' come from `offsets` (the choice's, fed token after token)."""
    scores = [*(prompt_scores or []), *tokens]
    text_offset = []
    if prompt_scores is not None:
        text_offset += token_offsets(tokenizer, [s.token for s in prompt_scores])
    if tokens:
        offsets = offsets or TokenOffsets(tokenizer)
        text_offset += offsets.of([t.token for t in tokens])
    return {
        "tokens": [token_text(tokenizer, s.token) for s in scores],
        "token_logprobs": [s.logprob for s in scores],
        "top_logprobs": [None if s.logprob is None else _top(s, tokenizer) for s in scores],
        "text_offset": text_offset,
    }


def _top(score: TokenLogprob, tokenizer) -> dict[str, float]:
    """The most likely tokens at a position (their text), and the token itself."""
    top = {token_text(tokenizer, token): logprob for token, logprob in score.top}
    top.setdefault(token_text(tokenizer, score.token), score.logprob)
    return top


def chat_logprobs(tokens: list[TokenLogprob], tokenizer) -> list[dict]:
    """The chat shape: each token with its log-probability, its UTF-8 bytes and its most
    likely alternatives."""
    content = []
    for score in tokens:
        text = token_text(tokenizer, score.token)
        alternatives = [
            {
                "token": token_text(tokenizer, token),
                "logprob": logprob,
                "bytes": list(token_text(tokenizer, token).encode()),
            }
            for token, logprob in score.top
        ]
        content.append(
            {
                "token": text,
                "logprob": score.logprob,
                "bytes": list(text.encode()),
                "top_logprobs": alternatives,
            }
        )
    return content
