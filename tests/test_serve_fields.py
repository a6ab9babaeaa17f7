"""Every row of docs/serving.md's request-field table, sent to the server: a served field
answers 200, a refused one 400 with `param` naming it, and the server goes on serving."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx2
import pytest

from test_serve import served  # noqa: F401 (the fixture)

DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
BASE = {
    "completions": {"model": "prompt3", "prompt": "it was", "max_tokens": 2, "temperature": 0},
    "chat": {
        "model": "prompt3",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "temperature": 0,
    },
}
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
NEEDS = {"top_logprobs": {"logprobs": True}}  # a field that only goes with another


def table_rows() -> list[tuple[str, str, str, object]]:
    """(route, field, served|refused, example) for every row of the table."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Request fields", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[1].startswith("`"):
            continue
        route, field, verdict, _, example = cells
        for one in ("completions", "chat") if route == "both" else (route,):
            rows.append((one, field.strip("`"), verdict, json.loads(example.strip("`"))))
    return rows


ROWS = table_rows()


def test_the_table_covers_both_routes_and_both_verdicts():
    assert {(route, verdict) for route, _, verdict, _ in ROWS} == {
        ("completions", "served"),
        ("completions", "refused"),
        ("chat", "served"),
        ("chat", "refused"),
    }
    assert len(ROWS) > 40


@pytest.mark.parametrize(("route", "field", "verdict", "example"), ROWS, ids=lambda v: str(v))
def test_each_field_is_served_or_refused_by_name(served, route, field, verdict, example):  # noqa: F811
    body = {**BASE[route], **NEEDS.get(field, {}), field: example}
    reply = httpx2.post(served.url + PATHS[route], json=body, timeout=60)
    if verdict == "served":
        assert reply.status_code == 200, reply.text
        if not body.get("stream"):
            assert reply.json()["choices"], reply.text
        return
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == field
    assert re.search(rf"\b{field}\b", error["message"])
    assert httpx2.get(served.url + "/health").status_code == 200


def test_a_refused_field_passes_with_the_value_that_asks_for_nothing(served):  # noqa: F811
    for route, field, value in [
        ("completions", "best_of", 1),
        ("chat", "tools", []),
        ("chat", "store", False),
        ("chat", "response_format", {"type": "text"}),
    ]:
        reply = httpx2.post(served.url + PATHS[route], json={**BASE[route], field: value})
        assert reply.status_code == 200, (field, reply.text)


def test_logit_bias_and_penalties_change_what_is_generated(served):  # noqa: F811
    url = served.url + "/v1/completions"
    body = {**BASE["completions"], "max_tokens": 6}
    forced_id = served.backbone.tokenizer(" good", add_special_tokens=False).input_ids[0]
    forced = httpx2.post(url, json={**body, "logit_bias": {str(forced_id): 100}, "logprobs": 0})
    tokens = forced.json()["choices"][0]["logprobs"]["tokens"]
    assert tokens == [served.backbone.tokenizer.decode([forced_id])] * 6
    repeated = httpx2.post(url, json={**body, "max_tokens": 12}).json()["choices"][0]["text"]
    penalised = httpx2.post(
        url, json={**body, "max_tokens": 12, "frequency_penalty": 2.0, "presence_penalty": 2.0}
    ).json()["choices"][0]["text"]
    assert len(set(penalised.split())) >= len(set(repeated.split()))
    assert penalised != repeated
