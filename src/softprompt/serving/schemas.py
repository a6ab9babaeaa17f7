"""The request bodies of the OpenAI-compatible API, validated so that a bad value is refused
with the field named. Every field OpenAI's API defines for a route is either served or refused
with a 400 that names it (`REFUSED`; docs/serving.md has the table); a field the API does not
define is refused too: nothing a client asks for is dropped without a word."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from softprompt.decoding.logprobs import MAX_TOP

# Fields of OpenAI's API that softprompt serve does not serve: (the values that ask for
# nothing, so a client's default passes; what to do instead).
REFUSED_COMPLETION = {
    "best_of": ((None, 1), "ask for n choices instead"),
    "suffix": ((None, ""), "insertion is not served; send the text before the gap"),
}
REFUSED_CHAT = {
    "tools": ((None, []), "tool calling is not served"),
    "tool_choice": ((None, "none"), "tool calling is not served"),
    "functions": ((None, []), "function calling is not served"),
    "function_call": ((None, "none"), "function calling is not served"),
    "parallel_tool_calls": ((None,), "tool calling is not served"),
    "response_format": ((None, {"type": "text"}), "only plain text is served"),
    "audio": ((None,), "only text is served"),
    "modalities": ((None, ["text"]), "only text is served"),
    "prediction": ((None,), "predicted outputs are not served"),
    "reasoning_effort": ((None,), "the served models do not reason"),
    "web_search_options": ((None,), "web search is not served"),
    "verbosity": ((None,), "the served models have no verbosity setting"),
    "store": ((None, False), "completions are not stored"),
    "metadata": ((None, {}), "completions are not stored, so they take no metadata"),
    "service_tier": ((None, "auto", "default"), "there is one service tier"),
    "prompt_cache_key": ((None,), "there is no prompt cache to key"),
    "prompt_cache_retention": ((None,), "there is no prompt cache"),
}
# Accepted as what they are: identifiers of the end user, which change nothing served.
IDENTIFIERS = ("user", "safety_identifier")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    user: str | None = None
    safety_identifier: str | None = None


def _refuse(data, refused: dict) -> object:
    """A ValueError naming the first field that asks for something not served."""
    if not isinstance(data, dict):
        return data
    for name, (no_op, instead) in refused.items():
        if name in data and data[name] not in no_op:
            raise ValueError(f"{name}: not supported by softprompt serve ({instead})")
        data = {k: v for k, v in data.items() if k != name}
    return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool = False  # padding against side channels: nothing to pad here


class SamplingFields(_Request):
    """What completions and chat completions share."""

    max_tokens: int | None = Field(None, ge=0, le=4096)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)  # not in OpenAI's API; vLLM's and ours
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value):
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys are token ids, not {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"the bias of token {key} must be in [-100, 100]")
        return value

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    @property
    def biases(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: Prompt = Field(min_length=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unserved(cls, data):
        return _refuse(data, REFUSED_COMPLETION)

    @field_validator("prompt")
    @classmethod
    def _no_empty_token_list(cls, value):
        if isinstance(value, list) and any(isinstance(p, list) and not p for p in value):
            raise ValueError("a prompt of token ids needs at least one id")
        return value

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a text, or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unserved(cls, data):
        return _refuse(data, REFUSED_CHAT)

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs: true")
        if self.max_tokens == 0:
            raise ValueError("max_tokens: must be at least 1 for a chat completion")
        return self


# /v1/classify's bounds: texts per request (OpenAI's embeddings route takes 2,048 inputs) and
# characters per text (the task reads at most its max_length tokens of each; a longer text is
# only tokenizer work, and a request this large is a mistake or an attack)
MAX_CLASSIFY_INPUTS = 2048
MAX_CLASSIFY_CHARACTERS = 100_000


class ClassifyRequest(_Request):
    input: str | list[str] = Field(min_length=1)

    @field_validator("input")
    @classmethod
    def _bounded(cls, value):
        texts = [value] if isinstance(value, str) else value
        if len(texts) > MAX_CLASSIFY_INPUTS:
            raise ValueError(
                f"input: at most {MAX_CLASSIFY_INPUTS} texts per request, got {len(texts)}; "
                "split them over several requests"
            )
        for i, text in enumerate(texts):
            if len(text) > MAX_CLASSIFY_CHARACTERS:
                raise ValueError(
                    f"input: text {i} is {len(text)} characters, over the bound of "
                    f"{MAX_CLASSIFY_CHARACTERS}; send a shorter text"
                )
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input
