"""The door facing clients that send their body slowly, hang up, or leave before the first token.

Each request goes to the app with the fast path and to the one without (``fast_path=False``), on one
database and backend, as ``test_fast_path.py`` does: both must answer alike, with OpenAI's error object.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.openai_compat.fast_path import OpenAIFastPath
from registry.settings import Settings
from tests.completions import test_fast_path as shared
from tests.completions.conftest import WAIT, finished, publish, unique, until, until_taken, usage_rows
from tests.completions.fault_server import FaultServer
from tests.completions.test_fast_path import ErrorLog, comparable, layer_of
from tests.conftest import AppClient, http_scope, openai_problem, serve_over_http
from tests.openai_compat.test_fast_path import CHAT, chat

client, slow, keys, error_log = shared.client, shared.slow, shared.keys, shared.error_log
BODY_READ_TIMEOUT = 0.1  # the body below never arrives whole: this only bounds how long each request waits


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"body_read_timeout_seconds": BODY_READ_TIMEOUT})


async def stalled(first: bytes) -> AsyncIterator[bytes]:
    """A body whose first chunk comes and whose rest never does."""
    yield first
    await asyncio.Event().wait()


@pytest.mark.parametrize(("key", "status"), [("reader", 408), ("none", 401)])
async def test_a_body_that_misses_its_deadline_is_answered_alike_on_both_paths(
    client: AppClient, slow: AppClient, keys: dict[str, dict[str, str]], key: str, status: int
) -> None:
    """Litestar checks the key before it reads a body: the fast path hands a late body on, to answer alike."""
    fast_path = layer_of(client.app, OpenAIFastPath)
    first = json.dumps(chat("prompt:greet")).encode()[:20]
    headers = {"content-type": "application/json", "x-request-id": f"slow-body-{key}", **keys[key]}
    fast = await client.post(CHAT, content=stalled(first), headers=headers)
    reference = await slow.post(CHAT, content=stalled(first), headers=headers)

    assert (fast.status_code, fast_path.served) == (status, 0)
    assert comparable(fast) == comparable(reference)
    error = openai_problem(fast)
    if status == 408:
        assert error["type"] == "/problems/request_timeout"
        assert fast.headers["connection"] == "close"


async def hang_up_mid_body(
    app: Any, headers: dict[str, str], first: bytes, *, method: str = "POST", path: str = CHAT
) -> list[dict[str, Any]]:
    """Send ``first`` as the start of a longer body, then the client's disconnect; what the app sent."""
    sent: list[dict[str, Any]] = []
    messages = [
        {"type": "http.request", "body": first, "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if len(messages) > 1 else messages[0]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = http_scope(method, path, [(name.lower().encode(), value.encode()) for name, value in headers.items()])
    await app(scope, receive, send)
    return sent


async def test_a_client_that_hangs_up_mid_body_is_a_client_closed_request_not_a_logged_server_error(
    client: AppClient, slow: AppClient, keys: dict[str, dict[str, str]], error_log: ErrorLog
) -> None:
    body = json.dumps(chat("prompt:greet")).encode()
    headers = {"host": "testserver", "content-type": "application/json", "content-length": str(len(body))}
    answers = []
    for app in (client.app, slow.app):
        sent = await hang_up_mid_body(app, {**headers, **keys["reader"], "x-request-id": "hung-up"}, body[:20])
        start, whole = sent
        error = json.loads(whole["body"])["error"]
        answers.append((start["status"], error["code"], error["message"]))

    assert answers[0] == answers[1]
    assert answers[0][:2] == (499, "client_closed_request")
    assert error_log.entries == []


async def test_a_stream_left_before_its_first_token_is_recorded_once_as_cancelled_on_both_paths(
    client: AppClient,
    slow: AppClient,
    keys: dict[str, dict[str, str]],
    fault: FaultServer,
    admin_engine: AsyncEngine,
    error_log: ErrorLog,
) -> None:
    """The caller leaves while the backend has not sent a token: the upstream request is closed, one usage
    record says cancelled, and nothing is logged at ERROR."""
    models = {}
    for name, app_client in (("fast", client), ("slow", slow)):
        model = unique("stall-after:0")  # the backend answers, then sends no token until the registry leaves
        config = f"first-{name}"
        await publish(app_client, keys["admin"], backend="fault", model=model, prompt=config, config=config)
        models[config] = model
        async with serve_over_http(app_client.app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
            with error_log.from_uvicorn():
                body = chat(f"prompt:{config}", stream=True, stream_options={"include_usage": True})
                request = asyncio.create_task(http.post(CHAT, json=body, headers=keys["reader"], timeout=WAIT))

                async def arrived(model: str = model) -> bool:
                    return len(fault.seen(model, CHAT)) == 1  # the door and the backend share the path

                await until(arrived, "the backend to get the request")
                await until_taken(app_client)
                request.cancel()  # the caller leaves: its connection closes
                with pytest.raises(asyncio.CancelledError):
                    await request
                seen = await finished(fault, model)
        assert seen.disconnected

    assert layer_of(client.app, OpenAIFastPath).served == 1

    async def rows_written() -> list[dict[str, Any]]:
        await usage_rows(slow, keys["admin"], admin_engine)  # each app writes its own buffer of records
        return [row for row in await usage_rows(client, keys["admin"], admin_engine) if row["config"] in models]

    async def both_recorded() -> bool:  # once the backend has counted each prompt (registry.completions.prefill)
        return len(await rows_written()) == 2

    await until(both_recorded, "both left completions to be recorded")
    # No token came, so no usage either; the prompt the backend read is counted after the caller left (7 tokens).
    assert sorted(
        (r["config"], r["status"], r["stream"], r["input_tokens"], r["output_tokens"]) for r in await rows_written()
    ) == [
        ("first-fast", "cancelled", True, 7, 0),
        ("first-slow", "cancelled", True, 7, 0),
    ]
    assert error_log.entries == []


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        ("reader", 200, None),
        ("none", 401, "unauthorized"),
        ("forged", 401, "unauthorized"),
        ("analyst", 403, "forbidden"),
    ],
)
async def test_the_model_list_needs_a_key_with_the_read_scope(
    client: AppClient, keys: dict[str, dict[str, str]], key: str, status: int, code: str | None
) -> None:
    answer = await client.get("/v1/models", headers=keys[key])

    assert answer.status_code == status
    if code is None:
        assert "prompt:greet" in [model["id"] for model in answer.json()["data"]]
    else:
        assert openai_problem(answer)["type"] == f"/problems/{code}"
        assert answer.json()["error"]["code"] == code
