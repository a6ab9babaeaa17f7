"""A second widely used client against the server: LangChain's ChatOpenAI (langchain-openai),
whole and streamed, gives what the official `openai` client gets."""

from __future__ import annotations

import openai
from langchain_openai import ChatOpenAI

from test_serve import served  # noqa: F401 (the fixture)

QUESTION = "was the review good"


def test_langchain_chat_model_whole_and_streamed(served):  # noqa: F811
    reference = openai.OpenAI(base_url=served.url + "/v1", api_key="-", max_retries=0)
    expected = (
        reference.chat.completions.create(
            model="prefix2",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=6,
            temperature=0,
        )
        .choices[0]
        .message.content
    )
    chat = ChatOpenAI(
        base_url=served.url + "/v1",
        api_key="-",
        model="prefix2",
        temperature=0,
        max_tokens=6,
        max_retries=0,
    )
    whole = chat.invoke(QUESTION)
    assert whole.content == expected and expected
    assert whole.usage_metadata["output_tokens"] >= 1
    streamed = list(chat.stream(QUESTION))
    assert "".join(chunk.content for chunk in streamed) == expected
    assert len([c for c in streamed if c.content]) > 1  # really streamed, not one piece
    scored = chat.bind(logprobs=True).invoke(QUESTION)
    assert len(scored.response_metadata["logprobs"]["content"]) >= 1
