"""A fallback config's plan passes the same context check as the first: a fallback whose context cannot hold the
request is skipped and the first backend's failure is reported; one that can hold it serves.

The fault server's ``/tokenize`` counts words (plus 3 for chat): "Say hello to Ada." is 7 tokens, 15 with the
configs' ``max_tokens`` of 8. Its byte-based upper bound is above the fallbacks' small ``max_context_tokens``, so
every check of a fallback plan asks the backend to count, and the test counts those requests.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.completions.conftest import RegistryFactory, backend, parse_sse, publish, unique
from tests.completions.fault_server import CHAT, FaultServer
from tests.conftest import problem

COMPLETE = "/v1/prompts/greet/complete"
REQUEST = {"variables": {"name": "Ada"}}
PROMPT_TOKENS, MAX_TOKENS = 7, 8
TOO_SMALL = PROMPT_TOKENS + MAX_TOKENS - 1  # holds the prompt, not the prompt and max_tokens
BIG_ENOUGH = PROMPT_TOKENS + MAX_TOKENS


async def with_fallback(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, failing: str, spare: str, context: int
) -> httpx.AsyncClient:
    """Prompt ``greet`` on backend ``flaky`` running ``failing``, falling back to ``spare`` (on ``fault``) whose
    config holds ``context`` tokens; the first config holds 4096, so its own check needs no count."""
    url = fault.url  # type: ignore[attr-defined]
    client = await registry({"flaky": backend(url, max_retries=0), "fault": backend(url)})
    await publish(client, admin, backend="fault", model=spare, config="spare", prompt=None, max_context_tokens=context)
    await publish(client, admin, backend="flaky", model=failing, fallback={"name": "spare"}, max_context_tokens=4096)
    return client


async def streamed(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[int, Any]:
    """The stream's status and its problem (before the first token) or its events."""
    async with client.stream("POST", COMPLETE, json={**REQUEST, "stream": True}, headers=headers) as response:
        body = "".join([chunk async for chunk in response.aiter_text()])
        return response.status_code, (parse_sse(body) if response.status_code == 200 else body)


@pytest.mark.parametrize(
    "behaviour", ["status:503:all", "reset-after:2"], ids=["fails-before-answering", "fails-mid-answer"]
)
async def test_a_fallback_that_cannot_hold_the_request_is_skipped_and_the_first_failure_is_reported(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, behaviour: str
) -> None:
    failing, spare = unique(behaviour), unique("ok")
    client = await with_fallback(registry, admin, fault, failing, spare, TOO_SMALL)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 502, response.text
    assert problem(response)["type"] == "/problems/upstream_unavailable"  # not context_length_exceeded
    assert len(fault.seen(failing, CHAT)) == 1
    assert len(fault.seen(spare, "/tokenize")) == 1  # the fallback's plan was counted...
    assert fault.seen(spare, CHAT) == []  # ...and never sent


async def test_a_stream_whose_fallback_cannot_hold_the_request_reports_the_first_failure_before_streaming(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    failing, spare = unique("status:503:all"), unique("ok")
    client = await with_fallback(registry, admin, fault, failing, spare, TOO_SMALL)

    status, body = await streamed(client, admin)

    assert status == 502, body
    assert '"/problems/upstream_unavailable"' in body
    assert (len(fault.seen(spare, "/tokenize")), fault.seen(spare, CHAT)) == (1, [])


async def test_a_fallback_that_holds_the_request_is_checked_once_and_serves(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    failing, spare = unique("status:503:all"), unique("ok")
    client = await with_fallback(registry, admin, fault, failing, spare, BIG_ENOUGH)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["fallback_used"], body["config"]["name"], body["text"]) == (True, "spare", "Hello from the")
    assert len(fault.seen(spare, "/tokenize")) == 1
    assert len(fault.seen(spare, CHAT)) == 1
    assert fault.seen(failing, "/tokenize") == []  # the first config's own limit cleared it by the upper bound
