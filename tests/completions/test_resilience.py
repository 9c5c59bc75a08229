"""Timeouts, retries, the circuit breaker, fallback and the queue, against our fault server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.completions.conftest import RegistryFactory, backend, parse_sse, publish, unique
from tests.completions.fault_server import FaultServer
from tests.conftest import problem
from tests.waiting import PATIENCE_SECONDS

COMPLETE = "/v1/prompts/greet/complete"
REQUEST = {"variables": {"name": "Ada"}}


async def start(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, model: str, **options: Any
) -> httpx.AsyncClient:
    client = await registry({"fault": backend(fault.url, **options)})  # type: ignore[attr-defined]
    await publish(client, admin, backend="fault", model=model, max_context_tokens=4096)
    return client


async def stream_events(client: httpx.AsyncClient, headers: dict[str, str]) -> list[tuple[str, Any]]:
    async with client.stream("POST", COMPLETE, json={**REQUEST, "stream": True}, headers=headers) as response:
        assert response.status_code == 200
        return parse_sse("".join([chunk async for chunk in response.aiter_text()]))


async def test_503_is_retried_with_backoff_until_success(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("status:503:2")
    client = await start(registry, admin, fault, model, max_retries=3)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 200, response.text
    assert response.json()["text"] == "Hello from the"
    assert len(fault.seen(model)) == 3


async def test_429_is_retried(registry: RegistryFactory, admin: dict[str, str], fault: FaultServer) -> None:
    model = unique("status:429:1")
    client = await start(registry, admin, fault, model, max_retries=1)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 200
    assert len(fault.seen(model)) == 2


async def test_500_is_not_retried_and_answers_upstream_unavailable(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("status:500:all")
    client = await start(registry, admin, fault, model, max_retries=3)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 502
    assert problem(response)["type"] == "/problems/upstream_unavailable"
    assert len(fault.seen(model)) == 1


async def test_retries_exhausted_answers_upstream_unavailable(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("status:503:all")
    client = await start(registry, admin, fault, model, max_retries=2)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert problem(response)["type"] == "/problems/upstream_unavailable"
    assert len(fault.seen(model)) == 3


async def test_upstream_400_answers_upstream_bad_request(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("status:400:all")
    client = await start(registry, admin, fault, model)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 422
    assert problem(response)["type"] == "/problems/upstream_bad_request"
    assert "injected 400" in problem(response)["detail"]


async def test_slow_first_token_times_out_without_retry(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("slow-first:3")
    client = await start(registry, admin, fault, model, first_token_timeout=0.3, max_retries=2)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 504  # the first token would have come after 3 s, with a 200
    assert problem(response)["type"] == "/problems/upstream_timeout"
    assert len(fault.seen(model)) == 1


async def test_stream_failing_before_the_first_token_is_a_problem_not_a_stream(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    client = await start(registry, admin, fault, unique("slow-first:3"), first_token_timeout=0.3)

    response = await client.post(COMPLETE, json={**REQUEST, "stream": True}, headers=admin)

    assert response.status_code == 504
    assert problem(response)["type"] == "/problems/upstream_timeout"


async def test_slow_headers_count_against_the_first_token_timeout(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    client = await start(registry, admin, fault, unique("slow-headers:3"), first_token_timeout=0.3)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert problem(response)["type"] == "/problems/upstream_timeout"


async def test_total_timeout_ends_a_slow_completion(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    client = await start(registry, admin, fault, unique("trickle:0.1"), total_timeout=0.5)
    body = {**REQUEST, "max_tokens": 8}

    response = await client.post(COMPLETE, json=body, headers=admin)

    assert response.status_code == 504
    assert "did not finish" in problem(response)["detail"]


async def test_connect_timeout_is_retried_then_answers_upstream_timeout(
    registry: RegistryFactory, admin: dict[str, str], blackhole_url: str
) -> None:
    client = await registry({"hole": backend(blackhole_url, connect_timeout=0.2, max_retries=1)})
    await publish(client, admin, backend="hole", model="any", max_context_tokens=4096)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 504
    assert "connecting" in problem(response)["detail"]
    metrics = (await client.get("/metrics")).text
    assert 'registry_upstream_retries_total{backend="hole"} 1.0' in metrics  # two tries: max_retries=1


async def test_refused_connection_answers_upstream_unavailable(
    registry: RegistryFactory, admin: dict[str, str], closed_port_url: str
) -> None:
    client = await registry({"down": backend(closed_port_url, max_retries=1)})
    await publish(client, admin, backend="down", model="any", max_context_tokens=4096)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 502
    assert problem(response)["type"] == "/problems/upstream_unavailable"


async def test_reset_mid_stream_is_not_retried(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("reset-after:2")
    client = await start(registry, admin, fault, model, max_retries=3)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 502
    assert "mid-stream" in problem(response)["detail"]
    assert len(fault.seen(model)) == 1


async def test_reset_mid_stream_ends_a_stream_with_an_error_event(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    client = await start(registry, admin, fault, unique("reset-after:2"))

    events = await stream_events(client, admin)

    names = [name for name, _ in events]
    assert names[0] == "metadata"
    assert set(names[1:-1]) == {"delta"}
    assert "".join(data["text"] for name, data in events if name == "delta") == "Hello from"
    assert names[-1] == "error"
    assert events[-1][1]["type"] == "/problems/upstream_unavailable"


async def test_tokens_read_together_with_a_malformed_event_are_streamed_before_the_error(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    client = await start(registry, admin, fault, unique("malformed-joined:2"))

    events = await stream_events(client, admin)

    names = [name for name, _ in events]
    assert names[0] == "metadata"
    assert "".join(data["text"] for name, data in events if name == "delta") == "Hello from"
    assert names[-1] == "error"
    assert "malformed" in events[-1][1]["detail"]


async def test_reset_before_the_first_token_is_retried(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("reset-after:0")
    client = await start(registry, admin, fault, model, max_retries=2)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 502
    assert len(fault.seen(model)) == 3


@pytest.mark.parametrize("behaviour", ["malformed", "malformed-after:2", "malformed-joined:2"])
async def test_malformed_sse_answers_upstream_unavailable(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, behaviour: str
) -> None:
    model = unique(behaviour)
    client = await start(registry, admin, fault, model, max_retries=2)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 502
    assert "malformed" in problem(response)["detail"]
    assert len(fault.seen(model)) == 1


async def test_breaker_opens_after_consecutive_failures_and_recovers_after_a_probe(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("status:500:2")
    now = [1_000.0]
    client = await registry(
        {"fault": backend(fault.url, breaker_failures=2, breaker_cooldown=0.5, max_retries=0)},  # type: ignore[attr-defined]
        clock=lambda: now[0],
    )
    await publish(client, admin, backend="fault", model=model, max_context_tokens=4096)

    failures = [await client.post(COMPLETE, json=REQUEST, headers=admin) for _ in range(2)]
    refused = await client.post(COMPLETE, json=REQUEST, headers=admin)
    metrics = (await client.get("/metrics")).text
    now[0] += 0.6  # past the cooldown, however long the requests above took
    probe = await client.post(COMPLETE, json=REQUEST, headers=admin)
    after = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert [r.status_code for r in failures] == [502, 502]
    assert refused.status_code == 503
    assert problem(refused)["type"] == "/problems/circuit_open"
    assert refused.headers["retry-after"] == "1"
    assert 'registry_backend_breaker_state{backend="fault"} 2.0' in metrics
    assert probe.status_code == 200
    assert after.status_code == 200
    assert len(fault.seen(model)) == 4  # the refused request never reached the backend
    assert 'registry_backend_breaker_state{backend="fault"} 0.0' in (await client.get("/metrics")).text


async def test_fallback_config_serves_when_retries_are_exhausted(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, closed_port_url: str
) -> None:
    client = await registry(
        {"down": backend(closed_port_url, max_retries=1), "fault": backend(fault.url)}  # type: ignore[attr-defined]
    )
    await publish(client, admin, backend="fault", model=unique("ok"), config="spare", prompt=None)
    await publish(
        client, admin, backend="down", model="big", fallback={"name": "spare", "version": 1}, max_context_tokens=4096
    )

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fallback_used"] is True
    assert body["config"]["name"] == "spare"
    assert body["config"]["backend"] == "fault"


async def test_fallback_config_serves_while_the_breaker_is_open(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    url = fault.url  # type: ignore[attr-defined]
    client = await registry(
        {"flaky": backend(url, breaker_failures=1, breaker_cooldown=60, max_retries=0), "fault": backend(url)}
    )
    await publish(client, admin, backend="fault", model=unique("ok"), config="spare", prompt=None)
    failing = unique("status:500:all")
    await publish(client, admin, backend="flaky", model=failing, fallback={"name": "spare"}, max_context_tokens=4096)

    first = await client.post(COMPLETE, json=REQUEST, headers=admin)  # fails, opens the breaker, falls back
    second = await client.post(COMPLETE, json=REQUEST, headers=admin)  # breaker open: straight to the fallback

    assert first.json()["fallback_used"] is True
    assert second.json()["fallback_used"] is True
    assert len(fault.seen(failing)) == 1


async def test_a_backend_failing_mid_answer_falls_back_unless_tokens_were_streamed(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    url = fault.url  # type: ignore[attr-defined]
    client = await registry({"flaky": backend(url, max_retries=3), "fault": backend(url)})
    await publish(client, admin, backend="fault", model=unique("ok"), config="spare", prompt=None)
    failing = unique("reset-after:2")
    await publish(client, admin, backend="flaky", model=failing, fallback={"name": "spare"}, max_context_tokens=4096)

    whole = await client.post(COMPLETE, json=REQUEST, headers=admin)
    streamed = await stream_events(client, admin)

    assert whole.status_code == 200, whole.text
    assert whole.json()["fallback_used"] is True
    assert whole.json()["text"] == "Hello from the"  # the fallback's answer only, not the failed one's start
    names = [name for name, _ in streamed]
    assert names[0] == "metadata"
    assert names[-1] == "error"  # tokens had reached the caller: no second answer spliced on
    assert len(fault.seen(failing)) == 2  # one per request: a mid-answer failure is never retried


async def test_full_queue_answers_503_with_retry_after_at_once(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    client = await start(registry, admin, fault, unique("trickle:0.05"), max_concurrency=1, max_queue=1)
    body = {**REQUEST, "max_tokens": 8}

    answered: list[int] = []

    async def complete() -> httpx.Response:
        response = await client.post(COMPLETE, json=body, headers=admin)
        answered.append(response.status_code)
        return response

    results = await asyncio.gather(*(complete() for _ in range(3)))

    assert sorted(r.status_code for r in results) == [200, 200, 503]
    busy = next(r for r in results if r.status_code == 503)
    assert problem(busy)["type"] == "/problems/backend_busy"
    assert busy.headers["retry-after"] == "1"
    assert answered[0] == 503, "the refusal did not wait for a slot: it came before both completions"


async def test_client_disconnect_cancels_the_upstream_request(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: Any
) -> None:
    model = unique("trickle:0.05")
    client = await start(registry, admin, fault, model)

    async with client.stream("POST", COMPLETE, json={**REQUEST, "stream": True}, headers=admin) as response:
        lines = response.aiter_lines()
        while "delta" not in await anext(lines):
            pass
    deadline = time.monotonic() + PATIENCE_SECONDS  # a hang guard only
    # The fault server runs on another thread's loop: poll rather than share an asyncio.Event.
    while not fault.seen(model)[0].finished and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)

    seen = fault.seen(model)[0]
    assert seen.finished
    assert seen.disconnected
    usage = (await client.get("/v1/usage", params={"group_by": "prompt"}, headers=admin)).json()
    assert usage["items"][0]["errors"] == 1  # recorded as cancelled
