"""The circuit breaker where it meets the other features of the backend path: the queue for a slot, the
request's deadline and a streamed probe, through both completion doors.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.completions.conftest import RegistryFactory, backend, publish, registry, unique  # noqa: F401 - a fixture
from tests.completions.fault_server import FaultServer
from tests.conftest import openai_problem, problem
from tests.seams.conftest import eventually, ok

COMPLETE = "/v1/prompts/greet/complete"
CHAT = "/v1/chat/completions"
BREAKER = 'registry_backend_breaker_state{backend="fault"}'


async def model_config(client: httpx.AsyncClient, admin: dict[str, str], name: str, model: str) -> None:
    """Config ``name`` on the stand-in's behaviour ``model``, in production (the door's ``config:NAME``)."""
    await ok(await client.post("/v1/configs", json={"name": name}, headers=admin))
    body = {"backend": "fault", "model": model, "params": {"max_tokens": 8}, "max_context_tokens": 4096}
    await ok(await client.post(f"/v1/configs/{name}/versions", json=body, headers=admin))
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post(f"/v1/configs/{name}/versions/1/promote", json=promote, headers=admin))


def chat(config: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": f"config:{config}", "messages": [{"role": "user", "content": "Hi"}], "stream": stream}


async def breaker_state(client: httpx.AsyncClient) -> str:
    metrics = (await client.get("/metrics")).text
    return next(line.split()[-1] for line in metrics.splitlines() if line.startswith(BREAKER))


async def test_a_half_open_breaker_closes_when_its_probe_answers_not_when_the_probes_stream_ends(
    registry: RegistryFactory,  # noqa: F811
    admin: dict[str, str],
    fault: FaultServer,
) -> None:
    now = [1_000.0]
    url = fault.url  # type: ignore[attr-defined]
    client = await registry(
        {"fault": backend(url, breaker_failures=1, breaker_cooldown=5, max_retries=0)}, clock=lambda: now[0]
    )
    good = unique("ok")
    await publish(client, admin, backend="fault", model=good, config="good", max_context_tokens=4096)
    await model_config(client, admin, "bad", unique("status:500:all"))
    await model_config(client, admin, "slow", unique("stall-after:1"))  # one token, then nothing until we leave

    failed = await client.post(CHAT, json=chat("bad"), headers=admin)
    refused = await client.post(COMPLETE, json={"variables": {"name": "Ada"}}, headers=admin)
    now[0] += 6  # past the cooldown: the next request is the probe
    async with client.stream("POST", CHAT, json=chat("slow", stream=True), headers=admin) as probe:
        lines = probe.aiter_lines()
        while "content" not in await anext(lines):
            pass  # the probe's first token: the backend answers again
        during = await asyncio.gather(
            client.post(COMPLETE, json={"variables": {"name": "Ada"}}, headers=admin),
            client.post(CHAT, json=chat("good"), headers=admin),
        )
        state_during = await breaker_state(client)

    assert failed.status_code == 502, failed.text
    assert problem(refused)["type"] == "/problems/circuit_open"
    # Before, every request was refused with 503 circuit_open for as long as the probe's answer streamed.
    assert [r.status_code for r in during] == [200, 200], [r.text for r in during]
    assert during[0].json()["text"] == "Hello from the"
    assert during[1].json()["choices"][0]["message"]["content"] == "Hello from the"
    assert state_during == "0.0"
    assert len(fault.seen(good)) == 2


async def test_requests_queued_past_their_deadline_do_not_open_the_breaker_of_a_backend_that_answers(
    registry: RegistryFactory,  # noqa: F811
    admin: dict[str, str],
    fault: FaultServer,
) -> None:
    url = fault.url  # type: ignore[attr-defined]
    options = {"max_concurrency": 1, "max_queue": 4, "breaker_failures": 2, "max_retries": 0}
    client = await registry({"fault": backend(url, first_token_timeout=5.0, total_timeout=1.0, **options)})
    good, stall = unique("ok"), unique("stall-after:1")
    await publish(client, admin, backend="fault", model=unique("slow-first:5"), config="late", max_context_tokens=4096)
    await model_config(client, admin, "stall", stall)  # holds the one slot to its deadline
    await model_config(client, admin, "good", good)

    async def held_to_its_deadline() -> list[str]:
        async with client.stream("POST", CHAT, json=chat("stall", stream=True), headers=admin) as response:
            return [line async for line in response.aiter_lines()]

    holder = asyncio.create_task(held_to_its_deadline())
    await eventually(lambda: _sent(fault, stall), "the holder's first token")
    queued = await client.post(COMPLETE, json={"variables": {"name": "Ada"}}, headers=admin)
    held = await holder
    after = await client.post(CHAT, json=chat("good"), headers=admin)

    assert any("upstream_timeout" in line for line in held)  # the holder stalled: one failure, counted
    # The queued request waited for the slot until its deadline had (nearly) passed: a timeout, but not the
    # backend's: it was never given its first_token_timeout. Before, it counted as the second failure in a row,
    # the breaker opened and the next request was refused with 503 circuit_open.
    assert problem(queued)["type"] == "/problems/upstream_timeout"
    assert after.status_code == 200, openai_problem(after)
    assert await breaker_state(client) == "0.0"


async def _sent(fault: FaultServer, model: str) -> bool:
    return any(seen.sent for seen in fault.seen(model))
