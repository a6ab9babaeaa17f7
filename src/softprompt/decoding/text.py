"""The text a row has produced, as it becomes final, decoded in O(new tokens) per token.

`IncrementalDecoder` is the prefix-offset/read-offset scheme of vLLM's and TGI's incremental
detokenizers: each new token is decoded together with the few tokens before it (a window that
starts where the last final text began), and the text it adds is the window's text past the
text of the window without it. The window gives a token the context that decides its text:
a SentencePiece or word-level token's leading space (which a decoder drops at the start of
what it decodes), and the other bytes of a character split over byte-level tokens; text that
ends inside a character waits for the rest. The first generated token is decoded after the
last prompt tokens, so the generated text is exactly what follows the prompt's text (echo's
prompt + text, to the character), and text once final is never rewritten.

`RowText` adds stop strings on top: text is held back where a stop string may be starting,
and cut at the first one. `TokenOffsets` says where each token's text begins, for the
log-probabilities' `text_offset`.
"""

from __future__ import annotations

from collections.abc import Sequence

CONTEXT = 5  # prompt tokens decoded before the first generated one (vLLM's and TGI's choice)


def drop_cut_character(text: str) -> str:
    """`text` without the U+FFFD replacement characters at its end: what decoding leaves where
    the last byte-level token stopped inside a multi-byte character (an emoji, CJK), a
    character the model did not finish rather than one it wrote."""
    return text.rstrip("\ufffd")


class IncrementalDecoder:
    """The text of a stream of token ids, after `context` ids (whose text is not part of it).
    `push` takes a token and returns the text that became final with it; `flush` gives what
    is left at the end; `length` counts the characters handed out so far."""

    def __init__(self, tokenizer, context: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self._ids = list(context)[-CONTEXT:]
        self._prefix = 0  # the window's first token
        self._read = len(self._ids)  # tokens before it have given their final text
        self._before: str | None = None  # the text of the window's tokens before `_read`
        self.length = 0

    def push(self, token: int) -> str:
        """Add a token; the text it made final ("" while the text ends inside a character,
        or the token has no text of its own yet)."""
        self._ids.append(token)
        piece = self._pending()
        if not piece or piece.endswith("\ufffd"):
            return ""
        self._prefix, self._read, self._before = self._read, len(self._ids), None
        self.length += len(piece)
        return piece

    def flush(self) -> str:
        """The text of the tokens not final yet, less a character cut at the end."""
        piece = drop_cut_character(self._pending())
        self._prefix, self._read, self._before = self._read, len(self._ids), None
        self.length += len(piece)
        return piece

    def _pending(self) -> str:
        if self._before is None:
            self._before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        return after[len(self._before) :] if len(after) > len(self._before) else ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class TokenOffsets:
    """Where each token's text begins in a choice's text, token after token: `start` plus the
    characters the tokens before it gave (after `context`, the prompt's ids)."""

    def __init__(self, tokenizer, context: Sequence[int] = (), start: int = 0) -> None:
        self.decoder = IncrementalDecoder(tokenizer, context)
        self.start = start

    def of(self, ids: Sequence[int]) -> list[int]:
        """The offsets of these next tokens (a token inside an unfinished character begins
        where that character does)."""
        offsets = []
        for token in ids:
            offsets.append(self.start + self.decoder.length)
            self.decoder.push(token)
        return offsets


def token_offsets(tokenizer, ids: Sequence[int], start: int = 0) -> list[int]:
    """Where each of `ids`'s texts begins in their decoded text, plus `start`."""
    return TokenOffsets(tokenizer, (), start).of(ids)


class RowText:
    """A row's tokens and text. `add` takes a token and says whether a stop string ended the
    text; `take_final` gives the text that became final since it was last called. The text
    follows `prompt_ids` (decoded after the last of them, see `IncrementalDecoder`)."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = (), prompt_ids: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.tokens: list[int] = []
        self.sent = 0  # characters already handed out
        self._decoder = IncrementalDecoder(tokenizer, prompt_ids)
        self._hold = max((len(s) for s in self.stop), default=1) - 1
        self._out: list[str] = []  # the pieces handed out
        self._held = ""  # final text not handed out yet
        self._stopped = self._flushed = False

    def add(self, token: int) -> bool:
        """Append a token; True when the text now holds a stop string (the text ends before
        it)."""
        self.tokens.append(token)
        if not self._stopped:
            self._take(self._decoder.push(token))
        return self._stopped

    def _take(self, piece: str) -> None:
        """Add final text; a stop string can only begin in its last `_hold` characters before
        the piece (earlier ones were searched), so only those and the piece are searched."""
        if not piece:
            return
        begin = max(len(self._held) - self._hold, 0)
        self._held += piece
        found = [at for s in self.stop if (at := self._held.find(s, begin)) >= 0]
        if found:
            self._held = self._held[: min(found)]
            self._stopped = True

    @property
    def text(self) -> str:
        """The whole text so far (at the end: the row's result)."""
        return "".join(self._out) + self._held

    def take_final(self, finished: bool = False) -> str:
        """The text that became final since the last call: all of it once `finished`, else
        short of what could still be the start of a stop string."""
        if finished and not self._stopped and not self._flushed:
            self._flushed = True
            self._take(self._decoder.flush())
        end = len(self._held) if finished else max(len(self._held) - self._hold, 0)
        piece, self._held = self._held[:end], self._held[end:]
        if piece:
            self._out.append(piece)
            self.sent += len(piece)
        return piece
