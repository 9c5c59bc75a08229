"""Features combined through both completion doors: ``/complete`` and the OpenAI-compatible one.

Each test runs one combination (guards, the exact cache, budgets, fallbacks, streaming and
``include_usage``) through both doors and compares what each answers and what each records.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.sse import ChunkReader
from tests.completions.conftest import (  # noqa: F401 - registry, held: fixtures
    HeldBackend,
    RegistryFactory,
    backend,
    finished,
    held,
    parse_sse,
    registry,
    serve_in_thread,
    unique,
    until,
)
from tests.completions.fault_server import FaultServer, say
from tests.conftest import openai_problem, problem
from tests.guards.conftest import config_version, prompt_on

COMPLETE = "/v1/prompts/ask/complete"
CHAT = "/v1/chat/completions"
RECORDED = (
    "prompt, config, stream, status, error_type, finish_reason, input_tokens, output_tokens, cost, cached, "
    "fallback_used, guard_blocked, guard_flagged, guard_outcomes"
)
SECRET = {"name": "no-secrets", "kind": "deny_patterns", "patterns": ["secret"], "on": "output", "window": 8}
FLAGGED = '{"flagged": true, "category": "violence", "reason": "a threat"}'
ANSWER = "Here is a long harmless start of an answer, and then the secret."


@pytest.fixture(params=[True, False], ids=["fast-path", "litestar"])
async def client(
    registry: RegistryFactory,  # noqa: F811
    fault: FaultServer,
    request: pytest.FixtureRequest,
) -> httpx.AsyncClient:
    """The registry on the stand-in (``fault``, and ``flaky`` without retries), with the doors' fast paths or not."""
    url = fault.url  # type: ignore[attr-defined]
    backends = {"fault": backend(url), "flaky": backend(url, max_retries=0)}
    return await registry(backends, completion_cache_ttl_seconds=60, fast_path=request.param)


async def records(client: httpx.AsyncClient, headers: dict[str, str], engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every completion record, oldest first (GET /v1/usage writes the buffer first)."""
    assert (await client.get("/v1/usage", headers=headers)).status_code == 200
    async with engine.connect() as connection:
        rows = await connection.execute(text(f"SELECT {RECORDED} FROM completions ORDER BY id"))
        return [dict(row._mapping) for row in rows.all()]


def but_what_was_read(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its output tokens, cost and finish reason: a completion cut short counts what had been read
    by then, which depends on how the answer was split into reads (on a busy machine the last chunk, with the finish
    reason, can come in the same read as the blocked text)."""
    return {name: value for name, value in record.items() if name not in ("output_tokens", "cost", "finish_reason")}


def chunks(response: httpx.Response) -> list[dict[str, Any]]:
    """An OpenAI stream's JSON events (not ``[DONE]``)."""
    assert response.status_code == 200, response.text
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]


def chunk_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        (c["choices"][0].get("delta") or {}).get("content") or c["choices"][0].get("text") or ""
        for c in events
        if c.get("choices")
    )


async def guarded(
    client: httpx.AsyncClient, headers: dict[str, str], model: str, guards: list[dict[str, Any]], **config: Any
) -> None:
    """Config ``cfg`` on the stand-in (``model``, ``guards``) and prompt ``ask`` on it, storing its texts."""
    body = {"backend": "fault", "model": model, "params": {"max_tokens": 50}, "guards": guards, **config}
    number = await config_version(client, headers, "cfg", body)
    await prompt_on(client, headers, "ask", "cfg", number, "Answer {{ question }}")
    response = await client.patch("/v1/prompts/ask", json={"store_io": True}, headers=headers)
    assert response.status_code == 200, response.text


def door(stream: bool, include_usage: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "prompt:ask",
        "messages": [],
        "variables": {"question": "story"},
        "stream": stream,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


# -- an output guard blocking a streamed answer


async def test_a_stream_an_output_guard_blocks_is_recorded_and_charged_alike_through_both_doors(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    await guarded(client, admin, say(ANSWER), [SECRET], output_price_per_mtok=1000.0)

    ours = await client.post(COMPLETE, json={"variables": {"question": "story"}, "stream": True}, headers=admin)
    theirs = await client.post(CHAT, json=door(stream=True, include_usage=True), headers=admin)

    events = parse_sse(ours.text)
    assert [name for name, _ in events][-1] == "error"
    problem = events[-1][1]
    openai = chunks(theirs)
    assert "usage" not in openai[-1]  # the stream ended in error: no usage chunk
    assert openai[-1]["error"]["problem"] | {"instance": None, "request_id": None} == problem | {
        "instance": None,
        "request_id": None,
    }
    # How much of the harmless start leaves depends on how the answer was split into reads; none of the pattern.
    for sent in ("".join(data["text"] for name, data in events if name == "delta"), chunk_text(openai)):
        assert ANSWER[: ANSWER.index("secret")].startswith(sent)
    by_complete, by_openai = await records(client, admin, admin_engine)
    assert but_what_was_read(by_openai) == but_what_was_read(by_complete)
    assert (by_complete["status"], by_complete["guard_blocked"]) == ("blocked", "no-secrets")
    assert min(by_complete["output_tokens"], by_openai["output_tokens"]) > 0
    assert min(by_complete["cost"], by_openai["cost"]) > 0


async def test_of_a_blocked_answer_only_what_reached_the_caller_is_stored_whole_or_streamed_through_both_doors(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    """A block keeps the answer from the caller; the stored texts (``store_io``) keep no more of it than the caller
    got: nothing of a whole answer, the released start of a stream, never the blocked pattern."""
    await guarded(client, admin, say(ANSWER), [SECRET])

    whole = [
        await client.post(COMPLETE, json={"variables": {"question": "story"}}, headers=admin),
        await client.post(CHAT, json=door(stream=False), headers=admin),
    ]
    streamed = [
        await client.post(COMPLETE, json={"variables": {"question": "story"}, "stream": True}, headers=admin),
        await client.post(CHAT, json=door(stream=True), headers=admin),
    ]

    assert [response.status_code for response in whole] == [422, 422]
    assert (await client.get("/v1/usage", headers=admin)).status_code == 200  # the buffer written
    async with admin_engine.connect() as connection:
        rows = await connection.execute(text("SELECT stream, status, completion_text FROM completions ORDER BY id"))
        stored = [tuple(row) for row in rows.all()]
    assert [(stream, status) for stream, status, _ in stored] == [(False, "blocked")] * 2 + [(True, "blocked")] * 2
    assert [text_ for stream, _, text_ in stored if not stream] == [None, None]
    sent = [
        "".join(data["text"] for name, data in parse_sse(streamed[0].text) if name == "delta"),
        chunk_text(chunks(streamed[1])),
    ]
    assert [text_ or "" for stream, _, text_ in stored if stream] == sent
    assert all("secret" not in text_ for text_ in sent)


# -- the exact cache


async def test_an_exact_cache_hit_answers_alike_through_both_doors_with_its_usage_and_no_cost(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine, fault: FaultServer
) -> None:
    model = unique("ok")
    await guarded(client, admin, model, [], params={"temperature": 0, "max_tokens": 50}, output_price_per_mtok=1000.0)

    miss = chunks(await client.post(CHAT, json=door(stream=True, include_usage=True), headers=admin))
    whole = (await client.post(COMPLETE, json={"variables": {"question": "story"}}, headers=admin)).json()
    hit = chunks(await client.post(CHAT, json=door(stream=True, include_usage=True), headers=admin))
    ours = parse_sse(
        (await client.post(COMPLETE, json={"variables": {"question": "story"}, "stream": True}, headers=admin)).text
    )
    plain = (await client.post(CHAT, json=door(stream=False), headers=admin)).json()

    assert len(fault.seen(model, CHAT)) == 1
    assert chunk_text(hit) == chunk_text(miss) == whole["text"] == plain["choices"][0]["message"]["content"]
    assert hit[-1]["usage"] == miss[-1]["usage"] == plain["usage"]
    assert whole["usage"]["total_tokens"] == miss[-1]["usage"]["total_tokens"]
    done = dict(ours)["done"]
    assert done["usage"] == whole["usage"]
    assert (whole["cost"], done["cost"], plain["registry"]["cost"], hit[-2]["registry"]["cost"]) == (0, 0, 0, 0)
    assert miss[-2]["registry"]["cost"] > 0
    rows = await records(client, admin, admin_engine)
    assert [row["cached"] for row in rows] == [False, True, True, True, True]
    assert all((row["input_tokens"], row["output_tokens"], row["cost"]) == (0, 0, 0) for row in rows[1:])


async def test_a_redacted_answer_is_cached_redacted_and_screened_again_on_a_hit_through_the_other_door(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine, fault: FaultServer
) -> None:
    model = unique(say("Write to jane.doe@example.com today, please, and say hello from me."))
    pii = {"name": "pii", "kind": "pii", "on": "output", "action": "redact", "window": 32}
    await guarded(client, admin, model, [pii], params={"temperature": 0, "max_tokens": 50})

    streamed = parse_sse(
        (await client.post(COMPLETE, json={"variables": {"question": "story"}, "stream": True}, headers=admin)).text
    )
    hit = await client.post(CHAT, json=door(stream=False), headers=admin)
    streamed_hit = chunks(await client.post(CHAT, json=door(stream=True, include_usage=True), headers=admin))

    expected = "Write to [EMAIL] today, please, and say hello from me."
    assert "".join(data["text"] for name, data in streamed if name == "delta") == expected
    assert hit.json()["choices"][0]["message"]["content"] == expected
    assert hit.headers["x-registry-cached"] == "true"
    assert chunk_text(streamed_hit) == expected
    assert len(fault.seen(model, CHAT)) == 1
    rows = await records(client, admin, admin_engine)
    assert [row["cached"] for row in rows] == [False, True, True]
    assert [row["status"] for row in rows] == ["ok", "ok", "ok"]


async def test_an_answer_an_output_guard_blocked_mid_stream_is_not_cached_for_either_door(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine, fault: FaultServer
) -> None:
    model = unique(say(ANSWER))
    await guarded(client, admin, model, [SECRET], params={"temperature": 0, "max_tokens": 50})

    first = chunks(await client.post(CHAT, json=door(stream=True), headers=admin))
    again = await client.post(COMPLETE, json={"variables": {"question": "story"}}, headers=admin)

    assert first[-1]["error"]["code"] == "content_blocked"
    assert again.status_code == 422
    assert len(fault.seen(model, CHAT)) == 2
    rows = await records(client, admin, admin_engine)
    assert [(row["status"], row["cached"]) for row in rows] == [("blocked", False), ("blocked", False)]


# -- budgets


async def test_a_blocked_stream_is_charged_to_the_keys_budget_as_recorded_through_both_doors(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    await guarded(client, admin, say(ANSWER), [SECRET], output_price_per_mtok=1000.0)
    key_id = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]
    budget_url = f"/v1/keys/{key_id}/budget"
    assert (await client.put(budget_url, json={"monthly_tokens": 100000}, headers=admin)).is_success

    await client.post(COMPLETE, json={"variables": {"question": "story"}, "stream": True}, headers=admin)
    await client.post(CHAT, json=door(stream=True, include_usage=True), headers=admin)
    used = (await client.get(budget_url, headers=admin)).json()

    rows = await records(client, admin, admin_engine)
    assert used["used_tokens"] == sum(row["input_tokens"] + row["output_tokens"] for row in rows) > 0
    assert used["used_cost"] == pytest.approx(sum(row["cost"] for row in rows))


# -- fallbacks


@pytest.mark.parametrize("stream", [False, True])
async def test_a_fallback_answer_is_guarded_and_recorded_alike_through_both_doors(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine, stream: bool
) -> None:
    pii = {"name": "pii", "kind": "pii", "on": "output", "action": "redact", "window": 32}
    spare = {"backend": "fault", "model": say("Mail jane.doe@example.com for the rest of it."), "params": {}}
    await config_version(client, admin, "spare", spare)
    body = {
        "backend": "flaky",
        "model": unique("status:503:all"),
        "params": {"max_tokens": 50, "temperature": 0},
        "fallback": {"name": "spare"},
        "guards": [pii],
    }
    number = await config_version(client, admin, "cfg", body)
    await prompt_on(client, admin, "ask", "cfg", number, "Answer {{ question }}")
    await client.patch("/v1/prompts/ask", json={"store_io": True}, headers=admin)

    ours = await client.post(COMPLETE, json={"variables": {"question": "story"}, "stream": stream}, headers=admin)
    theirs = await client.post(CHAT, json=door(stream=stream, include_usage=stream), headers=admin)

    expected = "Mail [EMAIL] for the rest of it."
    if stream:
        assert "".join(data["text"] for name, data in parse_sse(ours.text) if name == "delta") == expected
        assert chunk_text(chunks(theirs)) == expected
        assert theirs.headers["x-registry-fallback-used"] == "true"
    else:
        assert ours.json()["text"] == expected
        assert theirs.json()["choices"][0]["message"]["content"] == expected
    by_complete, by_openai = await records(client, admin, admin_engine)
    assert by_openai == by_complete
    assert (by_complete["fallback_used"], by_complete["config"], by_complete["cached"]) == (True, "spare", False)


# -- a caller leaving


@pytest.mark.parametrize("through", ["complete", "openai"])
async def test_a_caller_leaving_while_an_output_guard_holds_the_answer_is_recorded_cancelled_with_its_tokens(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine, fault: FaultServer, through: str
) -> None:
    model = unique("stall-after:3")
    await guarded(client, admin, model, [{**SECRET, "window": 64}])

    async def read() -> bool:  # the three tokens come in one write: the registry reads them with the first
        metrics = (await client.get("/metrics")).text
        return 'registry_upstream_ttft_seconds_count{backend="fault"} 1.0' in metrics

    if through == "complete":
        call = client.post(COMPLETE, json={"variables": {"question": "story"}, "stream": True}, headers=admin)
    else:
        call = client.post(CHAT, json=door(stream=True, include_usage=True), headers=admin)
    answer = asyncio.create_task(call)
    await until(read, "the registry to read the backend's tokens")
    answer.cancel()
    seen = await finished(fault, model)

    assert seen.disconnected
    [row] = await records(client, admin, admin_engine)
    assert (row["status"], row["stream"], row["input_tokens"], row["output_tokens"]) == ("cancelled", True, 7, 3)


# -- a request the backend finds too long


class TooLong:
    """A backend that refuses every completion as longer than its context, as vLLM words it (400)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        body = json.dumps({"error": {"message": "This model's maximum context length is 16 tokens."}}).encode()
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def test_a_request_the_backend_finds_too_long_is_refused_and_not_recorded_through_either_door_or_mode(
    registry: RegistryFactory,  # noqa: F811
    admin: dict[str, str],
    admin_engine: AsyncEngine,
) -> None:
    with serve_in_thread(TooLong(), lifespan="off") as url:
        client = await registry({"fault": backend(url)})
        # The prompt is short enough for the registry's own bound: only the backend refuses it.
        await guarded(client, admin, "tiny", [], max_context_tokens=4096)

        answers = [
            await client.post(COMPLETE, json={"variables": {"question": "story"}, "stream": stream}, headers=admin)
            for stream in (False, True)
        ] + [await client.post(CHAT, json=door(stream=stream), headers=admin) for stream in (False, True)]

        assert [answer.status_code for answer in answers] == [422] * 4
        assert {problem(answer)["type"] for answer in answers[:2]} == {"/problems/context_length_exceeded"}
        assert {openai_problem(answer)["type"] for answer in answers[2:]} == {"/problems/context_length_exceeded"}
        assert await records(client, admin, admin_engine) == []  # an input error, recorded by neither mode


# -- a defect of ours


@pytest.fixture
def reader_fails_on_from(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream reader raises an unexpected error (a defect, not the backend's) on the read bringing " from"
    (the stand-in's second token, whole in one event)."""
    read = ChunkReader.read

    def failing(self: ChunkReader, data: bytes) -> str:
        text = read(self, data)
        if " from" in text:
            raise IndexError("a defect of the reader")
        return text

    monkeypatch.setattr(ChunkReader, "read", failing)


@pytest.mark.usefixtures("reader_fails_on_from")
@pytest.mark.parametrize("stream", [False, True])
# Most often at the first read (tokens sent at once), and mid-answer (one token every 20 ms); either way alike.
@pytest.mark.parametrize("behaviour", ["ok", "trickle:0.02"])
async def test_an_unexpected_failure_is_recorded_as_an_error_not_a_cancellation_through_both_doors(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine, stream: bool, behaviour: str
) -> None:
    await guarded(client, admin, unique(behaviour), [], params={"max_tokens": 5})

    ours = await client.post(COMPLETE, json={"variables": {"question": "story"}, "stream": stream}, headers=admin)
    theirs = await client.post(CHAT, json=door(stream=stream), headers=admin)

    # A failure at the first read is answered before the stream starts; mid-answer, the stream ends with an
    # error event, as for the backend's failures (each door's request splits into reads its own way).
    if ours.status_code == 500 or not stream:
        assert problem(ours)["type"] == "/problems/internal_error"
    else:
        name, body = parse_sse(ours.text)[-1]
        assert (name, body["type"]) == ("error", "/problems/internal_error")
    if theirs.status_code == 500 or not stream:
        assert openai_problem(theirs)["type"] == "/problems/internal_error"
    else:
        assert chunks(theirs)[-1]["error"]["code"] == "internal_error"
    rows = await records(client, admin, admin_engine)
    # What had been read (tokens, finish reason) depends on the read that failed: at the first, none is counted.
    outcome = ("prompt", "config", "stream", "status", "error_type", "cached", "fallback_used")
    assert [tuple(row[name] for name in outcome) for row in rows] == [
        ("ask", "cfg", stream, "error", "internal_error", False, False)
    ] * 2


# -- the semantic cache


async def test_a_semantic_hit_streams_through_the_openai_door_with_its_usage_and_the_output_guard_rerun(
    registry: RegistryFactory,  # noqa: F811
    held: HeldBackend,  # noqa: F811
    admin: dict[str, str],
    admin_engine: AsyncEngine,
) -> None:
    held.release.set()  # answers at once; its fixed embedding makes every request of a scope a hit
    stand_in = backend(held.url)
    client = await registry(
        {"fault": stand_in, "embed": stand_in}, semantic_cache_backend="embed", semantic_cache_model="fixed"
    )
    flag = {"name": "rude", "kind": "deny_patterns", "patterns": ["stupid"], "on": "output", "action": "flag"}
    await guarded(client, admin, say("That is a stupid question."), [flag], params={"temperature": 0})
    settings = {"enabled": True, "threshold": 0.8}
    assert (await client.put("/v1/prompts/ask/semantic-cache", json=settings, headers=admin)).is_success

    miss = (await client.post(COMPLETE, json={"variables": {"question": "story"}}, headers=admin)).json()
    response = await client.post(CHAT, json=door(stream=True, include_usage=True), headers=admin)
    hit = chunks(response)

    assert miss["cached"] is False
    assert response.headers["x-registry-cached"] == "semantic"
    assert chunk_text(hit) == miss["text"] == "That is a stupid question."
    assert hit[-1]["usage"] == {
        "prompt_tokens": miss["usage"]["input_tokens"],
        "completion_tokens": miss["usage"]["output_tokens"],
        "total_tokens": miss["usage"]["total_tokens"],
    }
    facts = hit[-2]["registry"]
    assert (facts["cached"], facts["similarity"], facts["cost"]) == ("semantic", 1.0, 0)
    rows = await records(client, admin, admin_engine)
    assert [(row["cached"], row["output_tokens"], row["guard_flagged"]) for row in rows] == [
        (False, miss["usage"]["output_tokens"], True),
        (True, 0, True),  # the cached answer passed the output guards again
    ]


# -- a model-graded output guard


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_output_guard_blocks_alike_through_both_doors_and_its_classifier_is_charged_to_the_key(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine, stream: bool
) -> None:
    judge = {"backend": "fault", "model": unique(say(FLAGGED)), "params": {"max_tokens": 200}}
    number = await config_version(client, admin, "judge", judge)
    await prompt_on(client, admin, "moderator", "judge", number, "{{ text }}")
    moderation = {"name": "moderation", "kind": "model", "prompt": "moderator", "on": "output"}
    await guarded(client, admin, say("a violent answer"), [moderation], output_price_per_mtok=1000.0)
    key_id = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]

    ours = await client.post(COMPLETE, json={"variables": {"question": "story"}, "stream": stream}, headers=admin)
    theirs = await client.post(CHAT, json=door(stream=stream, include_usage=stream), headers=admin)

    if stream:  # held whole, so nothing of it was sent: the stream is its metadata, then the error
        assert [name for name, _ in parse_sse(ours.text)] == ["metadata", "error"]
        blocked = parse_sse(ours.text)[-1][1]
        openai = chunks(theirs)
        assert chunk_text(openai) == ""
        assert openai[-1]["error"]["problem"]["guard"] == blocked["guard"] == "moderation"
    else:
        assert problem(ours)["guard"] == openai_problem(theirs)["guard"] == "moderation"
    rows = await records(client, admin, admin_engine)
    assert [(row["prompt"], row["status"]) for row in rows] == [
        ("moderator", "ok"),
        ("ask", "blocked"),
        ("moderator", "ok"),
        ("ask", "blocked"),
    ]
    assert rows[3] == rows[1]
    used = (await client.get(f"/v1/keys/{key_id}/budget", headers=admin)).json()
    assert used["used_tokens"] == sum(row["input_tokens"] + row["output_tokens"] for row in rows)
