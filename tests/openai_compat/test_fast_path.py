"""The fast path answers the OpenAI-compatible door exactly as the Litestar handler behind it does.

As ``tests/completions/test_fast_path.py`` does for ``/complete`` (whose apps, prompts and
comparison these tests share): every request goes to an app with the fast path and to one
with ``fast_path=False`` on the same database and backend, and must be answered alike and
served where expected. The door's refusals are OpenAI's error object in both.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.fast_path import CompletionFastPath
from registry.openai_compat.fast_path import OpenAIFastPath
from registry.settings import Settings
from tests.completions import test_fast_path as shared
from tests.completions.conftest import publish, unique
from tests.completions.fault_server import PROMPT_TOKENS, FaultServer
from tests.completions.test_fast_path import (
    ODD_HOSTS,
    Case,
    ErrorLog,
    answered_alike,
    comparable,
    encoded,
    leave_a_stream,
    over_the_limit,
    over_the_rate_limit,
    pair,
    sse_events,
    with_backends,
)
from tests.conftest import AppClient, KeyFactory, openai_problem, problem

# The apps, prompts and keys of the /complete cases (fixtures).
client, slow, keys, error_log = shared.client, shared.slow, shared.keys, shared.error_log

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
ADA = {"name": "Ada"}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def door(client: AppClient, keys: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The prompts of ``keys``, and a text prompt for ``/v1/completions``."""
    await publish(
        client, keys["admin"], backend="fault", model=unique("ok"), prompt="essay", config="text", kind="text"
    )
    return keys


def chat(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [], "variables": ADA, **fields}


def text(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "variables": ADA, **fields}


STREAM = {"stream": True}
USAGE = {"stream": True, "stream_options": {"include_usage": True}}
DOOR_CASES: list[Case] = [
    # (key, path, body, status, served by the fast path)
    ("reader", CHAT, chat("prompt:greet"), 200, True),
    ("reader", CHAT, chat("prompt:greet", **STREAM), 200, True),
    ("reader", CHAT, chat("prompt:greet", **USAGE), 200, True),
    ("reader", CHAT, chat("prompt:greet", stream=True, stream_options={"include_usage": False}), 200, True),
    ("reader", CHAT, chat("prompt:greet@staging"), 200, True),
    ("reader", CHAT, chat("prompt:greet@staging", **USAGE), 200, True),
    ("reader", CHAT, chat("prompt:greet@1", max_completion_tokens=2, seed=7, user="u-1"), 200, True),
    ("admin", CHAT, chat("prompt:greet", unit="user-3", **STREAM), 200, True),
    ("reader", TEXT, {"model": "prompt:support/chat", "variables": {"q": "why?"}, **USAGE}, 200, True),
    ("reader", CHAT, {"model": "config:cfg", "messages": HI}, 200, True),
    ("reader", CHAT, {"model": "config:cfg@production", "messages": HI, **USAGE}, 200, True),
    ("reader", TEXT, text("prompt:essay"), 200, True),
    ("reader", TEXT, text("prompt:essay", **STREAM), 200, True),
    ("reader", TEXT, text("prompt:essay", **USAGE), 200, True),
    ("reader", TEXT, {"model": "config:text", "prompt": "Once"}, 200, True),
    ("reader", TEXT, {"model": "config:text", "prompt": ["Once"], **STREAM}, 200, True),
    ("reader", CHAT, chat("prompt:nope"), 404, True),
    ("reader", CHAT, chat("prompt:nope", **STREAM), 404, True),
    ("reader", CHAT, chat("gpt-4o"), 404, True),
    ("reader", CHAT, chat("prompt:greet@7"), 404, True),
    ("reader", CHAT, chat("prompt:greet@canary"), 404, True),
    ("reader", CHAT, {"model": "config:nope", "messages": HI}, 404, True),
    ("reader", CHAT, {"model": "prompt:greet", "messages": []}, 422, True),
    ("reader", CHAT, {"model": "prompt:greet", "messages": [], **STREAM}, 422, True),
    ("reader", CHAT, chat("prompt:greet", temperature=0.2), 422, True),
    ("reader", CHAT, chat("prompt:greet", max_tokens=9), 422, True),
    ("reader", CHAT, {"model": "config:cfg", "messages": HI, "variables": ADA}, 422, True),
    ("reader", TEXT, text("prompt:essay", echo=True), 422, True),
    ("none", CHAT, chat("prompt:greet"), 401, True),
    ("forged", CHAT, chat("prompt:greet", **STREAM), 401, True),
    ("analyst", TEXT, text("prompt:essay"), 403, True),
    ("reader", CHAT, chat("prompt:unreachable"), 502, True),
    ("reader", CHAT, chat("prompt:unreachable", **STREAM), 502, True),
    ("reader", CHAT, chat("prompt:cut"), 502, True),
    ("reader", CHAT, chat("prompt:cut", **STREAM), 200, True),
    ("reader", CHAT, chat("prompt:cut", **USAGE), 200, True),
    ("reader", CHAT, b'{"model": "prompt:greet", ', 400, False),
    ("reader", TEXT, b"{not json", 400, False),
    ("reader", CHAT, b"[]", 422, False),
    ("reader", CHAT, b"", 422, False),
    ("reader", CHAT, {"messages": []}, 422, False),
    ("reader", CHAT, chat("prompt:greet", stream="yes"), 422, False),
    ("reader", CHAT, chat("prompt:greet", n=2), 422, False),
    ("reader", CHAT, chat("prompt:greet", colour="red"), 422, False),
    ("reader", CHAT, {"model": "prompt:greet", "messages": [{"role": "tool", "content": "x"}]}, 422, False),
    ("reader", TEXT, text("prompt:essay", prompt=["a", "b"]), 422, False),
    ("reader", TEXT, text("prompt:essay", messages=[]), 422, False),
    ("none", CHAT, b"{", 401, False),
    ("reader", CHAT, over_the_limit(b'{"model": "prompt:greet", "variables": {"name": ', b"}}"), 413, False),
    ("reader", TEXT, over_the_limit(b'{"model": "prompt:essay", "prompt": ', b"}"), 413, False),
    *[(f"reader at {host}", CHAT, chat("prompt:greet"), 400, False) for host in ODD_HOSTS],
    *[(f"reader at {host}", TEXT, text("prompt:essay"), 400, False) for host in ODD_HOSTS],
]


async def test_the_door_answers_as_litestar_does(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]]
) -> None:
    answers = await answered_alike(client, slow, door, OpenAIFastPath, DOOR_CASES, joined_chunks)
    for (key, *_), answer in zip(DOOR_CASES, answers, strict=True):
        if answer.status_code != 200:
            error = openai_problem(answer)  # refusals before routing too (a bad host header, 415)
            if key.startswith("reader at "):
                assert error["detail"] == "Invalid host header"


async def test_the_expected_answers_came_back(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]]
) -> None:
    """The cases above compare like with like: these are the answers they were meant to provoke."""
    reader = door["reader"]
    usage, _ = await pair(client, slow, CHAT, encoded(chat("prompt:greet", **USAGE)), reader)
    chunks = [event["data"] for event in sse_events(usage.text)]
    assert chunks[-1] == "[DONE]"
    assert chunks[-2]["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 3, "total_tokens": 10}
    assert usage.headers["x-registry-prompt"] == "greet"
    plain, _ = await pair(client, slow, CHAT, encoded(chat("prompt:greet", **STREAM)), reader)
    assert all("usage" not in chunk for chunk in [event["data"] for event in sse_events(plain.text)][:-1])
    staging, _ = await pair(client, slow, CHAT, encoded(chat("prompt:greet@staging")), reader)
    assert staging.headers["x-registry-prompt-version"] == "2"
    cut, _ = await pair(client, slow, CHAT, encoded(chat("prompt:cut", **STREAM)), reader)
    error = sse_events(cut.text)[-1]["data"]["error"]
    assert (error["code"], error["problem"]["status"]) == ("upstream_unavailable", 502)
    assert error["problem"]["request_id"].startswith("fast-path-")


async def test_a_key_over_its_rate_limit_is_refused_alike_with_retry_after(
    settings: Settings, fault: FaultServer, closed_port_url: str, door: dict[str, dict[str, str]], make_key: KeyFactory
) -> None:
    limited = with_backends(settings, fault, closed_port_url)
    (fast_ok, slow_ok), (refused, slow_refused) = await over_the_rate_limit(
        limited, make_key, OpenAIFastPath, CHAT, chat("prompt:greet")
    )
    assert (fast_ok.status_code, refused.status_code) == (200, 429)
    assert refused.headers["retry-after"] == "45"
    assert openai_problem(refused)["type"] == "/problems/rate_limited"
    assert comparable(fast_ok, joined_chunks) == comparable(slow_ok, joined_chunks)
    assert comparable(refused, joined_chunks) == comparable(slow_refused, joined_chunks)


async def test_a_caller_leaving_a_stream_served_by_the_fast_path_closes_the_upstream_stream_quietly(
    client: AppClient,
    door: dict[str, dict[str, str]],
    fault: FaultServer,
    admin_engine: AsyncEngine,
    error_log: ErrorLog,
) -> None:
    body = chat("prompt:stalls", **USAGE)
    await leave_a_stream(
        client, door, fault, admin_engine, error_log, layer=OpenAIFastPath, url=CHAT, body=body, text_of=streamed_text
    )


def joined_chunks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's chunks with consecutive text chunks as one: tokens that arrive in one read upstream leave as
    one chunk, so where a text is split depends on the timing of each request."""
    out: list[dict[str, Any]] = []
    for event in events:
        if out and text_of(event) is not None and text_of(out[-1]) is not None:
            [choice] = out[-1]["data"]["choices"]
            field = "text" if "text" in choice else "delta"
            joined = text_of(out[-1]) + text_of(event)  # type: ignore[operator]
            choice = {**choice, field: joined} if field == "text" else {**choice, "delta": {"content": joined}}
            out[-1] = {**out[-1], "data": {**out[-1]["data"], "choices": [choice]}}
        else:
            out.append(event)
    return out


def text_of(event: dict[str, Any]) -> str | None:
    """The text of a chunk that carries only text, else None."""
    data = event.get("data")
    if not isinstance(data, dict) or len(data.get("choices") or []) != 1:
        return None
    [choice] = data["choices"]
    if choice.get("finish_reason") is not None:
        return None
    if "text" in choice:
        return str(choice["text"])
    delta = choice.get("delta")
    return str(delta["content"]) if isinstance(delta, dict) and set(delta) == {"content"} else None


def streamed_text(received: str) -> str:
    """The content of the whole chunks in what was received of a chat stream."""
    whole = received[: received.rfind("\n\n") + 2]
    return "".join(
        choice["delta"].get("content") or ""
        for event in sse_events(whole)
        if isinstance(event["data"], dict)
        for choice in event["data"]["choices"]
    )


# Bodies a careless or hostile client sends: valid JSON of the wrong shape, fields OpenAI has and the
# door refuses by name, odd models and bytes that are not JSON. Answered alike, the field named.
DEEP = (
    b'{"model": "prompt:greet", "messages": [], "variables": {"name": "Ada", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}}"
)
CARELESS_CASES: list[Case] = [
    (
        "reader",
        CHAT,
        chat("prompt:greet", messages=[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]),
        200,
        True,
    ),
    ("reader", CHAT, chat("prompt:greet", messages=[{"role": "user", "content": 5}]), 422, False),
    ("reader", CHAT, chat("prompt:greet", messages=[{"role": "user", "content": None}]), 422, False),
    ("reader", CHAT, chat("prompt:greet", messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 422, False),
    ("reader", CHAT, chat("prompt:greet", messages=[{"role": "user", "content": [{"type": "text"}]}]), 422, False),
    ("reader", CHAT, chat("prompt:greet", messages={"role": "user", "content": "Hi"}), 422, False),
    ("reader", CHAT, chat("prompt:greet", n=1), 200, True),
    ("reader", CHAT, chat("prompt:greet", logprobs=True), 422, True),
    ("reader", CHAT, chat("prompt:greet", tools=[]), 422, True),
    ("reader", CHAT, chat("prompt:greet", functions=[{"name": "f"}]), 422, False),
    ("reader", CHAT, chat("prompt:greet", max_tokens=-1), 422, False),
    ("reader", CHAT, chat("prompt:greet", max_tokens=10**30), 422, False),
    ("reader", CHAT, chat("prompt:greet", temperature=7), 422, True),
    ("reader", CHAT, chat("prompt:greet", temperature=None), 200, True),
    ("reader", CHAT, chat("prompt:greet", stop="x"), 422, True),
    ("reader", CHAT, chat("prompt:greet", stop=["x"]), 422, True),
    ("reader", CHAT, chat("prompt:greet", user="u" * 257), 422, False),
    ("reader", CHAT, chat(""), 422, False),
    ("reader", CHAT, chat("prompt:"), 404, True),
    ("reader", CHAT, chat("openai:gpt-4o"), 404, True),
    ("reader", CHAT, chat("prompt:greet@not a label"), 404, True),
    ("reader", CHAT, b"null", 422, False),
    ("reader", CHAT, b'"text"', 422, False),
    ("reader", CHAT, b"\xef\xbb\xbf" + encoded(chat("prompt:greet")), 400, False),
    ("reader", CHAT, b'{"model": "prompt:greet", "messages": [], "variables": {"name": "\xff"}}', 400, False),
    ("reader", CHAT, DEEP, 400, False),
    (
        "reader",
        CHAT,
        b'{"model": "gpt-4o", "model": "prompt:greet", "messages": [], "variables": {"name": "Ada"}}',
        200,
        True,
    ),
    ("reader", CHAT, encoded(chat("prompt:greet")) + b" trailing", 400, False),
    ("reader", TEXT, text("prompt:essay", prompt=[]), 422, False),
]


async def test_careless_bodies_are_answered_alike_naming_the_field(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]]
) -> None:
    answers = await answered_alike(client, slow, door, OpenAIFastPath, CARELESS_CASES, joined_chunks)
    named = {}
    for answer in answers:
        if answer.status_code == 422:
            named[answer.json()["error"]["param"]] = openai_problem(answer)["type"]
    assert set(named) >= {"messages[0].content", "messages[0].content[0].type", "logprobs", "tools", "max_tokens"}
    assert set(named) >= {"temperature", "stop", "user", "model", "body", "prompt", "functions"}


# Bytes msgspec words misleadingly: a leading byte order mark is an "invalid character (byte 0)" to it, a lone
# surrogate escape at the end of a string "truncated". Both are named, alike on /complete, on a route served by
# Litestar alone, and at the door (in OpenAI's error object), whether the fast path or Litestar reads the body.
BOM = b"\xef\xbb\xbf"
LONE_HIGH = rb'{"model": "prompt:greet", "messages": [], "variables": {"name": "\ud800"}}'
LONE_LOW = rb'{"model": "prompt:greet", "messages": [], "variables": {"name": "\udc00 and more"}}'
COMPLETE = "/v1/prompts/greet/complete"
UNREADABLE_CASES: list[Case] = [
    ("reader", COMPLETE, BOM + encoded({"variables": ADA}), 400, False),
    ("reader", COMPLETE, rb'{"variables": {"name": "\ud800"}}', 400, False),
    ("admin", "/v1/prompts", BOM + encoded({"name": unique("bom")}), 400, False),
    ("admin", "/v1/prompts", rb'{"name": "p", "description": "\ud800"}', 400, False),
]
DOOR_UNREADABLE_CASES: list[Case] = [
    ("reader", CHAT, BOM + encoded(chat("prompt:greet")), 400, False),
    ("reader", CHAT, LONE_HIGH, 400, False),
    ("reader", CHAT, LONE_LOW, 400, False),
    ("reader", TEXT, BOM + encoded(text("prompt:essay")), 400, False),
]
BOM_DETAIL = "the body is not valid JSON: it starts with a byte order mark (BOM); send UTF-8 JSON without one"


def lone_surrogate_detail(escape: str, byte: int) -> str:
    return (
        f"the body is not valid JSON: invalid \\u escape at byte {byte}: {escape} is a lone UTF-16 surrogate; "
        "a high surrogate (\\ud800-\\udbff) must be followed at once by a low one (\\udc00-\\udfff)"
    )


async def test_a_bom_or_a_lone_surrogate_is_named_alike_on_every_path(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]]
) -> None:
    answers = await answered_alike(client, slow, door, CompletionFastPath, UNREADABLE_CASES)
    assert [problem(answer)["detail"] for answer in answers] == [
        BOM_DETAIL,
        lone_surrogate_detail("\\ud800", 24),
        BOM_DETAIL,
        lone_surrogate_detail("\\ud800", 30),
    ]
    door_answers = await answered_alike(client, slow, door, OpenAIFastPath, DOOR_UNREADABLE_CASES, joined_chunks)
    details = [BOM_DETAIL, lone_surrogate_detail("\\ud800", 65), lone_surrogate_detail("\\udc00", 65), BOM_DETAIL]
    assert [answer.json()["error"]["message"] for answer in door_answers] == details
    assert [openai_problem(answer)["detail"] for answer in door_answers] == details
    assert {openai_problem(answer)["type"] for answer in door_answers} == {"/problems/malformed_json"}


# stream_options without stream: true is refused as OpenAI refuses it, by name, on both paths; with it, served here.
STREAM_OPTIONS_CASES: list[Case] = [
    ("reader", CHAT, chat("prompt:greet", stream_options={"include_usage": True}), 422, True),
    ("reader", CHAT, chat("prompt:greet", stream=False, stream_options={"include_usage": False}), 422, True),
    ("reader", TEXT, text("prompt:essay", stream_options={}), 422, True),
    ("reader", CHAT, {"model": "config:cfg", "messages": HI, "stream_options": {"include_usage": True}}, 422, True),
    ("reader", CHAT, chat("prompt:greet", stream_options=None), 200, True),
    ("reader", CHAT, chat("prompt:greet", **USAGE), 200, True),
    ("reader", TEXT, text("prompt:essay", **USAGE), 200, True),
]


async def test_stream_options_without_stream_is_refused_alike_naming_it(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]]
) -> None:
    answers = await answered_alike(client, slow, door, OpenAIFastPath, STREAM_OPTIONS_CASES, joined_chunks)
    for answer in answers:
        if answer.status_code == 422:
            assert openai_problem(answer)["type"] == "/problems/validation_error"
            assert answer.json()["error"]["param"] == "stream_options"
            assert "only allowed when stream is true" in answer.json()["error"]["problem"]["errors"][0]["message"]
