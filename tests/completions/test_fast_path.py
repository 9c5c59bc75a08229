"""The fast path answers ``/complete`` exactly as the Litestar handler behind it does.

Every request below is sent to two apps on the same database and the same
stand-in backend: one with the fast path (the default) and one with
``fast_path=False``. Status, the compared headers and the body (a stream event
by event) must match, with only what is measured per request masked, and each
request must be served where expected: the well-formed ones (successes, and
errors found while serving) by the fast path, the rest handed on to Litestar.
Both apps get the same ``X-Request-ID``, so the request ids in problems match.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import httpx
import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

import registry.lib.errors
from registry.app import create_app
from registry.auth.keys import Scope
from registry.completions.fast_path import CompletionFastPath
from registry.settings import Settings
from tests.api import create_prompt, create_version, path, promote
from tests.completions.conftest import backend, finished, publish, unique, usage_rows
from tests.completions.fault_server import PROMPT_TOKENS, FaultServer
from tests.conftest import AppClient, KeyFactory, serve_in_process, serve_over_http

Layer = TypeVar("Layer")
MEASURED = frozenset({"latency_ms", "ttft_ms", "created"})  # differ per request by design
COMPARED_HEADERS = (
    "content-type",
    "content-length",
    "cache-control",
    "x-accel-buffering",
    "retry-after",
    "www-authenticate",
)
GREET = "/v1/prompts/greet/complete"
ADA = {"variables": {"name": "Ada"}}
_request_ids = itertools.count()


def layer_of(app: Litestar, kind: type[Layer]) -> Layer:
    """The ASGI layer of type ``kind`` in front of Litestar, found by walking ``.app`` from the app's handler."""
    handler: Any = app.asgi_handler
    while not isinstance(handler, kind):
        handler = getattr(handler, "app", None)
        assert handler is not None, f"no {kind.__name__} in front of Litestar"
    return handler


def has_layer(app: Litestar, kind: type) -> bool:
    handler: Any = app.asgi_handler
    while handler is not None and not isinstance(handler, kind):
        handler = getattr(handler, "app", None)
    return handler is not None


def masked(value: Any) -> tuple[Any, int]:
    """``value`` with what is measured per request replaced, and how many values were replaced."""
    if isinstance(value, dict):
        count = 0
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in MEASURED and item is not None:
                out[key], count = "<measured>", count + 1
            else:
                out[key], inner = masked(item)
                count += inner
        return out, count
    if isinstance(value, list):
        pairs = [masked(item) for item in value]
        return [item for item, _ in pairs], sum(count for _, count in pairs)
    return value, 0


def sse_events(text: str) -> list[dict[str, Any]]:
    """A stream's events, each as its fields, ``data`` decoded when it is JSON."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            with suppress(json.JSONDecodeError):  # "[DONE]" stays as it is
                fields["data"] = json.loads(fields["data"])
        events.append(fields)
    return events


def joined_deltas(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our stream with consecutive deltas as one: tokens that arrive in one read upstream leave as one delta,
    so where a text is split depends on the timing of each request."""
    out: list[dict[str, Any]] = []
    for event in events:
        if event.get("event") == "delta" and out and out[-1].get("event") == "delta":
            out[-1] = {**out[-1], "data": {"text": out[-1]["data"]["text"] + event["data"]["text"]}}
        else:
            out.append(event)
    return out


def streamed_text(received: str) -> str:
    """The text of the whole events in what was received of our stream."""
    whole = received[: received.rfind("\n\n") + 2]
    return "".join(event["data"]["text"] for event in sse_events(whole) if event.get("event") == "delta")


Joiner = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def comparable(response: httpx.Response, joined: Joiner = joined_deltas) -> tuple[int, Any, dict[str, str]]:
    """Status, body (a stream as its events, ``joined``) and compared headers, with measured values masked.

    ``content-length`` is compared only when nothing was masked: a latency of another length changes it.
    """
    content_type = response.headers.get("content-type", "")
    body: Any = response.content
    replaced = 0
    if content_type.startswith("text/event-stream"):
        body, replaced = masked(joined(sse_events(response.text)))
    elif "json" in content_type and body:
        body, replaced = masked(response.json())
    headers = {
        name: value
        for name, value in response.headers.items()
        if name in COMPARED_HEADERS or name.startswith("x-registry-")
    }
    if replaced:
        headers.pop("content-length", None)
    return response.status_code, body, headers


def with_backends(settings: Settings, fault: FaultServer, closed_port_url: str) -> Settings:
    """The backends of both apps: breakers that stay closed, so both see the same failures in the same order."""
    steady = {"max_retries": 0, "breaker_failures": 1000}
    url = fault.url  # type: ignore[attr-defined]
    return settings.model_copy(
        update={"backends": {"fault": backend(url, **steady), "down": backend(closed_port_url, **steady)}}
    )


@pytest.fixture
async def client(
    settings: Settings, clean_database: AsyncEngine, fault: FaultServer, closed_port_url: str
) -> AsyncIterator[AppClient]:
    """The service with the fast path (the default), calling the stand-in backend."""
    async with serve_in_process(create_app(with_backends(settings, fault, closed_port_url))) as http:
        yield http


@pytest.fixture
async def slow(
    settings: Settings, client: AppClient, fault: FaultServer, closed_port_url: str
) -> AsyncIterator[AppClient]:
    """The same service without the fast path, on the same database and backends."""
    without = with_backends(settings, fault, closed_port_url).model_copy(update={"fast_path": False})
    async with serve_in_process(create_app(without)) as http:
        assert not has_layer(http.app, CompletionFastPath)
        yield http


async def pair(
    fast: AppClient, slow: AppClient, url: str, body: bytes, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    """The same request to both apps, with one request id."""
    headers = {"content-type": "application/json", "x-request-id": f"fast-path-{next(_request_ids)}", **headers}
    return await fast.post(url, content=body, headers=headers), await slow.post(url, content=body, headers=headers)


@pytest.fixture
async def keys(client: AppClient, admin: dict[str, str], make_key: KeyFactory) -> dict[str, dict[str, str]]:
    """Published prompts (one with a staging version, one named with '/', two on failing backends), and keys."""
    await publish(client, admin, backend="fault", model=unique("ok"), max_context_tokens=4096, prices=(1.0, 3.0))
    staging: dict[str, Any] = {"kind": "chat", "messages": [{"role": "user", "content": "Greet {{ name }} warmly."}]}
    await create_version(client, admin, "greet", config={"name": "cfg", "version": 1}, **staging)
    await promote(client, admin, "greet", 2, to="staging")
    await create_prompt(client, admin, "support/chat")
    await create_version(
        client, admin, "support/chat", template="Answer: {{ q }}", config={"name": "cfg", "version": 1}
    )
    await promote(client, admin, "support/chat", 1)
    await publish(client, admin, backend="down", model="any", prompt="unreachable", config="down-cfg")
    await publish(client, admin, backend="fault", model=unique("reset-after:2"), prompt="cut", config="cut-cfg")
    reader = await make_key(Scope.READ, name="reader")
    return {
        "admin": admin,
        "reader": reader,
        "analyst": await make_key(Scope.ANALYZE, name="analyst"),
        "forged": {"Authorization": reader["Authorization"][:-4] + "AAAA"},
        "none": {},
        **{f"reader at {host}": {**reader, "host": host} for host in ODD_HOSTS},
    }


ODD_HOSTS = ("bad host", "ex\\ample")  # Litestar refuses them (400): handed on
MAX_BODY_BYTES: int = Settings.model_fields["max_body_bytes"].default  # the tests' apps keep it


def over_the_limit(start: bytes, end: bytes) -> bytes:
    """A JSON body a byte over the size limit, a string between ``start`` and ``end``: handed on (then 413)."""
    body = start + b'"' + b"x" * (MAX_BODY_BYTES - len(start) - len(end) - 1) + b'"' + end
    assert len(body) == MAX_BODY_BYTES + 1
    return body


def encoded(body: dict[str, Any] | bytes) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


Case = tuple[str, str, dict[str, Any] | bytes, int, bool]  # key, path, body, status, served by the fast path
STREAM = {**ADA, "stream": True}
COMPLETE_CASES: list[Case] = [
    ("reader", GREET, ADA, 200, True),
    ("reader", GREET, STREAM, 200, True),
    ("reader", GREET, {**ADA, "label": "staging"}, 200, True),
    ("reader", GREET, {**STREAM, "label": "staging"}, 200, True),
    ("reader", GREET, {**ADA, "version": 1, "max_tokens": 2, "seed": 7, "user": "u-1", "unit": "qa"}, 200, True),
    ("admin", GREET, {**STREAM, "label": "production", "unit": "user-3"}, 200, True),
    ("reader", f"/v1/prompts/{path('support/chat')}/complete", {"variables": {"q": "why?"}}, 200, True),
    ("reader", f"/v1/prompts/{path('support/chat')}/complete", {"variables": {"q": "why?"}, "stream": True}, 200, True),
    ("reader", "/v1/prompts/nope/complete", ADA, 404, True),
    ("reader", f"/v1/prompts/{path('no/such')}/complete", STREAM, 404, True),
    ("reader", GREET, {**ADA, "label": "staging", "version": 1}, 422, True),
    ("reader", GREET, {**STREAM, "label": "latest", "version": 2}, 422, True),
    ("reader", GREET, {"variables": {}}, 422, True),
    ("reader", GREET, {"variables": {}, "stream": True}, 422, True),
    ("reader", GREET, {**ADA, "max_tokens": 9}, 422, True),
    ("reader", GREET, {**ADA, "version": 7}, 404, True),
    ("none", GREET, ADA, 401, True),
    ("forged", GREET, STREAM, 401, True),
    ("analyst", GREET, ADA, 403, True),
    ("reader", "/v1/prompts/unreachable/complete", ADA, 502, True),
    ("reader", "/v1/prompts/unreachable/complete", STREAM, 502, True),
    ("reader", "/v1/prompts/cut/complete", ADA, 502, True),
    ("reader", "/v1/prompts/cut/complete", STREAM, 200, True),
    ("reader", GREET, b"{not json", 400, False),
    ("reader", GREET, b'{"variables": ', 400, False),
    ("reader", GREET, b"[]", 422, False),
    ("reader", GREET, b"", 422, False),
    ("reader", GREET, {**ADA, "stream": "yes"}, 422, False),
    ("reader", GREET, {**ADA, "version": "2"}, 200, False),
    ("reader", GREET, {**ADA, "max_tokens": 0}, 422, False),
    ("reader", GREET, {**ADA, "temperature": 2}, 422, False),
    ("reader", GREET, {"variables": [1, 2]}, 422, False),
    ("none", GREET, b"{", 401, False),
    ("analyst", GREET, {**ADA, "colour": "red"}, 403, False),
    ("reader", GREET, over_the_limit(b'{"variables": {"name": ', b"}}"), 413, False),
    *[(f"reader at {host}", GREET, ADA, 400, False) for host in ODD_HOSTS],
]


async def answered_alike(
    client: AppClient,
    slow: AppClient,
    keys: dict[str, dict[str, str]],
    layer: type[Any],
    cases: list[Case],
    joined: Joiner = joined_deltas,
) -> list[httpx.Response]:
    """Each case sent to both apps: the status expected, served where expected, answered alike; the fast answers."""
    fast_path = layer_of(client.app, layer)
    answers = []
    for key, url, body, status, served_fast in cases:
        before = fast_path.served
        fast, reference = await pair(client, slow, url, encoded(body), keys[key])
        assert (fast.status_code, fast_path.served - before) == (status, int(served_fast)), (url, body, fast.text)
        assert comparable(fast, joined) == comparable(reference, joined), (key, url, body)
        answers.append(fast)
    return answers


async def test_complete_answers_as_litestar_does(
    client: AppClient, slow: AppClient, keys: dict[str, dict[str, str]]
) -> None:
    await answered_alike(client, slow, keys, CompletionFastPath, COMPLETE_CASES)


async def test_the_expected_answers_came_back(
    client: AppClient, slow: AppClient, keys: dict[str, dict[str, str]]
) -> None:
    """The cases above compare like with like: these are the answers they were meant to provoke."""
    reader = keys["reader"]
    streamed, _ = await pair(client, slow, GREET, encoded(STREAM), reader)
    assert [event["event"] for event in joined_deltas(sse_events(streamed.text))] == ["metadata", "delta", "done"]
    assert joined_deltas(sse_events(streamed.text))[1]["data"]["text"] == "Hello from the"
    cut, _ = await pair(client, slow, "/v1/prompts/cut/complete", encoded(STREAM), reader)
    assert [event["event"] for event in sse_events(cut.text)][-1] == "error"
    assert sse_events(cut.text)[-1]["data"]["request_id"].startswith("fast-path-")
    down, _ = await pair(client, slow, "/v1/prompts/unreachable/complete", encoded(STREAM), reader)
    assert down.status_code == 502
    slash, _ = await pair(client, slow, f"/v1/prompts/{path('support/chat')}/complete", b'{"variables": {}}', reader)
    assert slash.status_code == 422
    assert slash.json()["instance"] == f"/v1/prompts/{path('support/chat')}/complete"


async def over_the_rate_limit(
    settings: Settings, make_key: KeyFactory, layer: type[Any], url: str, body: dict[str, Any]
) -> list[tuple[httpx.Response, httpx.Response]]:
    """Two requests of a key limited to one a minute, to each app (fast first), with the minute 45 s from its end.

    Each app gets a key of its own (the apps share their counters through Redis), and the detail that
    names it is made alike; all the requests are served by the fast path.
    """
    limited = settings.model_copy(update={"rate_limit_per_minute": 1})
    fast_app, slow_app = create_app(limited), create_app(limited.model_copy(update={"fast_path": False}))
    answers: list[httpx.Response] = []
    async with serve_in_process(fast_app) as fast, serve_in_process(slow_app) as slow:
        for http in (fast, slow):
            http.app.state.runtime.rate_limiter.clock = lambda: 1_800_000_015.0
            key = await make_key(Scope.READ, name="limited")
            public_id = key["Authorization"].split("_")[1].encode()
            for _ in range(2):
                response = await http.post(url, json=body, headers={**key, "x-request-id": "rate-limited"})
                content = response.content.replace(public_id, b"<key>")
                answers.append(httpx.Response(response.status_code, headers=response.headers, content=content))
        assert layer_of(fast_app, layer).served == 2
    return [(answers[0], answers[2]), (answers[1], answers[3])]


async def test_a_key_over_its_rate_limit_is_refused_alike_with_retry_after(
    settings: Settings, fault: FaultServer, closed_port_url: str, keys: dict[str, dict[str, str]], make_key: KeyFactory
) -> None:
    limited = with_backends(settings, fault, closed_port_url)
    (fast_ok, slow_ok), (refused, slow_refused) = await over_the_rate_limit(
        limited, make_key, CompletionFastPath, GREET, ADA
    )
    assert (fast_ok.status_code, refused.status_code) == (200, 429)
    assert refused.headers["retry-after"] == "45"
    assert comparable(fast_ok) == comparable(slow_ok)
    assert comparable(refused) == comparable(slow_refused)


# -- a caller that goes away


class ErrorLog(logging.Handler):
    """What is logged at ERROR: the registry's problem log (``logger.error``) and standard library records."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.entries: list[str] = []

    def error(self, event: str, **fields: Any) -> None:
        self.entries.append(f"{event} {fields}")

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(f"{record.name}: {record.getMessage()}")

    @contextmanager
    def from_uvicorn(self) -> Iterator[None]:
        """uvicorn's loggers do not reach the root logger, and are set up anew when a server is made."""
        uvicorn_log = logging.getLogger("uvicorn.error")
        uvicorn_log.addHandler(self)
        try:
            yield
        finally:
            uvicorn_log.removeHandler(self)


@pytest.fixture
def error_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[ErrorLog]:
    log = ErrorLog()
    monkeypatch.setattr(registry.lib.errors, "logger", log)
    root = logging.getLogger()
    root.addHandler(log)
    try:
        yield log
    finally:
        root.removeHandler(log)


async def leave_a_stream(
    client: AppClient,
    keys: dict[str, dict[str, str]],
    fault: FaultServer,
    admin_engine: AsyncEngine,
    error_log: ErrorLog,
    *,
    layer: type[Any],
    url: str,
    body: dict[str, Any],
    text_of: Callable[[str], str],
) -> None:
    """Stream ``body`` from prompt "stalls" over a socket and leave once its three tokens are in (``text_of``
    what was received); the backend then sends nothing until the registry goes away.

    The fast path served it, the upstream request was aborted and recorded as cancelled with the tokens it
    sent, and nothing was logged at ERROR.
    """
    model = unique("stall-after:3")
    await publish(client, keys["admin"], backend="fault", model=model, prompt="stalls", config="stall-cfg")
    fast_path = layer_of(client.app, layer)

    async with serve_over_http(client.app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        with error_log.from_uvicorn():
            async with http.stream("POST", url, json=body, headers=keys["reader"]) as response:
                assert response.status_code == 200
                received = ""
                async for text in response.aiter_text():
                    received += text
                    if text_of(received) == "Hello from the":
                        break
            seen = await finished(fault, model)

    assert fast_path.served == 1
    assert seen.disconnected  # the registry closed its upstream connection
    rows = await usage_rows(client, keys["admin"], admin_engine)
    assert [(r["status"], r["stream"], r["input_tokens"], r["output_tokens"]) for r in rows] == [
        ("cancelled", True, PROMPT_TOKENS, 3)
    ]
    assert error_log.entries == []


async def test_a_caller_leaving_a_stream_served_by_the_fast_path_closes_the_upstream_stream_quietly(
    client: AppClient,
    keys: dict[str, dict[str, str]],
    fault: FaultServer,
    admin_engine: AsyncEngine,
    error_log: ErrorLog,
) -> None:
    await leave_a_stream(
        client,
        keys,
        fault,
        admin_engine,
        error_log,
        layer=CompletionFastPath,
        url="/v1/prompts/stalls/complete",
        body={**ADA, "stream": True},
        text_of=streamed_text,
    )
