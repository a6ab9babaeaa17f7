"""The text one row has produced, as it becomes final: decoded from all its tokens so far,
held back where a stop string may be starting or the last token stopped inside a multi-byte
character, and cut at the first stop string."""

from __future__ import annotations


def drop_cut_character(text: str) -> str:
    """`text` without the U+FFFD replacement characters at its end: what decoding leaves where
    the last byte-level token stopped inside a multi-byte character (an emoji, CJK), a
    character the model did not finish rather than one it wrote."""
    return text.rstrip("\ufffd")


class RowText:
    """A row's tokens and text. `add` takes a token and says whether a stop string ended the
    text; `take_final` gives the text that became final since it was last called."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.tokens: list[int] = []
        self.sent = 0  # characters already handed out
        self._text = ""
        self._stopped = False

    def add(self, token: int) -> bool:
        """Append a token; True when the text now holds a stop string (the text ends before
        it)."""
        self.tokens.append(token)
        self._text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        found = [self._text.find(s) for s in self.stop if s in self._text]
        if found:
            self._text = self._text[: min(found)]
            self._stopped = True
        return self._stopped

    @property
    def text(self) -> str:
        """The whole text so far (at the end: the row's result)."""
        return self._text if self._stopped else drop_cut_character(self._text)

    def take_final(self, finished: bool = False) -> str:
        """The text that became final since the last call: all of it once `finished`, else
        short of what could still be the start of a stop string or an unfinished character."""
        text = self.text
        end = len(text)
        if not finished:
            end -= max((len(s) for s in self.stop), default=1) - 1
        end = max(end, self.sent)
        piece, self.sent = text[self.sent : end], end
        return piece
