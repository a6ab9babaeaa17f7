"""The request bodies of the OpenAI-compatible API (the fields softprompt serves), validated
so that a bad value is refused with the field named."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)


class SamplingFields(_Request):
    """What completions and chat completions share."""

    max_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)  # not in OpenAI's API; vLLM's and ours
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=8)
    stream: bool = False

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop or ())


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(min_length=1)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)


class ClassifyRequest(_Request):
    input: str | list[str] = Field(min_length=1)

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input
