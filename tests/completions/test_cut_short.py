"""Completions cut short, by the backend failing or by the caller going away, against our fault server.

Whatever the backend generated before the end is recorded and charged; a caller
that goes away aborts the upstream request in both modes; a problem reported
inside a stream has the fields of one answered before it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from tests.completions.conftest import (
    RegistryFactory,
    backend,
    finished,
    parse_sse,
    publish,
    unique,
    until,
    until_taken,
    usage_rows,
)
from tests.completions.fault_server import CHAT, PROMPT_TOKENS, FaultServer
from tests.conftest import KeyFactory, problem

COMPLETE = "/v1/prompts/greet/complete"
REQUEST = {"variables": {"name": "Ada"}}
PRICES = (1.0, 3.0)  # per million input and output tokens


def cost(input_tokens: int, output_tokens: int, prices: tuple[float, float] = PRICES) -> float:
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1e6


async def start(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, model: str, **options: Any
) -> httpx.AsyncClient:
    client = await registry({"fault": backend(fault.url, **options)})  # type: ignore[attr-defined]
    await publish(
        client, admin, backend="fault", model=model, params={"max_tokens": 64}, max_context_tokens=4096, prices=PRICES
    )
    return client


async def stream_events(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[httpx.Response, list[Any]]:
    async with client.stream("POST", COMPLETE, json={**REQUEST, "stream": True}, headers=headers) as response:
        assert response.status_code == 200
        return response, parse_sse("".join([chunk async for chunk in response.aiter_text()]))


async def publish_breaking_off(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """``greet`` on backend ``flaky``, which breaks off after two tokens, falling back to the config ``spare``."""
    await publish(
        client,
        admin,
        backend="flaky",
        model=unique("reset-after:2"),
        fallback={"name": "spare"},
        max_context_tokens=4096,
        prices=PRICES,
    )


# -- item 4: tokens generated before a failure are counted and charged


async def test_a_stream_cut_by_a_backend_failure_records_and_charges_the_tokens_it_sent(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    model = unique("reset-after:12")
    client = await start(registry, admin, fault, model)

    _, events = await stream_events(client, admin)

    assert [name for name, _ in events][-1] == "error"
    assert len([name for name, _ in events if name == "delta"]) >= 1
    assert fault.seen(model)[0].payload["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    [row] = await usage_rows(client, admin, admin_engine)
    assert (row["status"], row["error_type"]) == ("error", "upstream_unavailable")
    assert (row["input_tokens"], row["output_tokens"]) == (PROMPT_TOKENS, 12)
    assert row["cost"] == pytest.approx(cost(PROMPT_TOKENS, 12))
    metrics = (await client.get("/metrics")).text
    assert 'registry_completion_tokens_total{backend="fault",direction="output"} 12.0' in metrics


async def test_a_whole_answer_cut_by_a_backend_failure_records_and_charges_the_tokens_it_read(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    client = await start(registry, admin, fault, unique("reset-after:12"))

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 502
    [row] = await usage_rows(client, admin, admin_engine)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("error", PROMPT_TOKENS, 12)
    assert row["cost"] == pytest.approx(cost(PROMPT_TOKENS, 12))


async def test_a_backend_that_reports_usage_only_at_the_end_is_charged_for_the_deltas_it_sent(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    client = await start(registry, admin, fault, unique("reset-after:12+usage-at-end"))

    _, events = await stream_events(client, admin)

    assert events[-1][0] == "error"
    [row] = await usage_rows(client, admin, admin_engine)
    assert (row["input_tokens"], row["output_tokens"]) == (0, 12)  # the prompt was never counted: not charged
    assert row["cost"] == pytest.approx(cost(0, 12))


async def test_a_fallback_after_a_failure_mid_answer_charges_both_attempts(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    url = fault.url  # type: ignore[attr-defined]
    client = await registry({"flaky": backend(url), "fault": backend(url)})
    spare_prices = (10.0, 30.0)
    await publish(client, admin, backend="fault", model=unique("ok"), config="spare", prompt=None, prices=spare_prices)
    await publish_breaking_off(client, admin)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    body = response.json()
    assert body["fallback_used"] is True
    assert body["text"] == "Hello from the"
    charged = cost(PROMPT_TOKENS, 2) + cost(PROMPT_TOKENS, 3, spare_prices)
    assert body["usage"] == {"input_tokens": 14, "output_tokens": 5, "total_tokens": 19}
    assert body["cost"] == pytest.approx(charged)
    [row] = await usage_rows(client, admin, admin_engine)
    assert (row["status"], row["config"], row["fallback_used"]) == ("ok", "spare", True)
    assert (row["input_tokens"], row["output_tokens"]) == (14, 5)
    assert row["cost"] == pytest.approx(charged)


async def test_a_caller_leaving_during_the_fallbacks_prefill_is_charged_both_attempts(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    """The first backend breaks off after two tokens (charged as generated); the fallback takes the request and
    sends nothing, and the caller leaves: the fallback's prompt is counted on its backend and charged at its
    prices, beside the first attempt's spend."""
    url = fault.url  # type: ignore[attr-defined]
    client = await registry({"flaky": backend(url), "fault": backend(url, first_token_timeout=120, total_timeout=120)})
    spare_prices, spare = (10.0, 30.0), unique("stall-after:0")
    await publish(client, admin, backend="fault", model=spare, config="spare", prompt=None, prices=spare_prices)
    await publish_breaking_off(client, admin)
    request = asyncio.create_task(client.post(COMPLETE, json=REQUEST, headers=admin))

    async def on_the_fallback() -> bool:
        return len(fault.seen(spare, CHAT)) == 1

    await until(on_the_fallback, "the fallback to get the request")
    await until_taken(client)
    request.cancel()
    await finished(fault, spare)

    async def recorded() -> bool:
        return len(await usage_rows(client, admin, admin_engine)) == 1

    await until(recorded, "the left completion to be recorded")
    [row] = await usage_rows(client, admin, admin_engine)
    assert (row["status"], row["config"], row["fallback_used"]) == ("cancelled", "spare", True)
    assert (row["input_tokens"], row["output_tokens"]) == (2 * PROMPT_TOKENS, 2)
    assert row["cost"] == pytest.approx(cost(PROMPT_TOKENS, 2) + cost(PROMPT_TOKENS, 0, spare_prices))


async def test_a_caller_leaving_while_the_fallback_waits_for_a_slot_is_charged_the_first_attempt_only(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    """The first backend breaks off after two tokens; the fallback's backend has one slot, held by another
    request, so the fallback waits for it and the caller leaves there: its prompt never reached that backend."""
    url = fault.url  # type: ignore[attr-defined]
    one_slot = backend(url, max_concurrency=1, first_token_timeout=120, total_timeout=120)
    client = await registry({"flaky": backend(url), "fault": one_slot})
    holder, spare = unique("stall-after:0"), unique("ok")
    await publish(
        client, admin, backend="fault", model=holder, prompt="holder", config="holder", max_context_tokens=4096
    )
    await publish(client, admin, backend="fault", model=spare, config="spare", prompt=None, max_context_tokens=4096)
    await publish_breaking_off(client, admin)
    held = asyncio.create_task(client.post("/v1/prompts/holder/complete", json=REQUEST, headers=admin))

    async def holding() -> bool:
        return len(fault.seen(holder, CHAT)) == 1

    await until(holding, "the other request to hold the fallback backend's slot")
    request = asyncio.create_task(client.post(COMPLETE, json=REQUEST, headers=admin))

    async def waiting() -> bool:
        return 'registry_backend_queue_depth{backend="fault"} 1.0' in (await client.get("/metrics")).text

    await until(waiting, "the fallback to wait for the slot")
    request.cancel()
    held.cancel()

    async def recorded() -> bool:
        return len(await usage_rows(client, admin, admin_engine)) == 2

    await until(recorded, "both left completions to be recorded")
    rows = {row["config"]: row for row in await usage_rows(client, admin, admin_engine)}
    assert (rows["spare"]["status"], rows["spare"]["fallback_used"]) == ("cancelled", True)
    assert (rows["spare"]["input_tokens"], rows["spare"]["output_tokens"]) == (PROMPT_TOKENS, 2)  # the first's only
    assert rows["spare"]["cost"] == pytest.approx(cost(PROMPT_TOKENS, 2))
    assert fault.seen(spare) == []


# -- item 5: a caller that goes away aborts the upstream request


async def test_a_caller_leaving_a_whole_answer_aborts_the_backend_and_is_recorded_cancelled_with_its_tokens(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    model = unique("stall-after:3")
    client = await start(registry, admin, fault, model, total_timeout=120)
    request = asyncio.create_task(client.post(COMPLETE, json=REQUEST, headers=admin))

    async def first_token_read() -> bool:  # the three tokens come in one write: read together with the first
        metrics = (await client.get("/metrics")).text
        return 'registry_upstream_ttft_seconds_count{backend="fault"} 1.0' in metrics

    await until(first_token_read, "the registry to read the first token")
    request.cancel()
    seen = await finished(fault, model)

    assert seen.disconnected  # the registry closed its upstream connection: vLLM aborts the request
    assert len(fault.seen(model, CHAT)) == 1
    [row] = await usage_rows(client, admin, admin_engine)
    assert (row["status"], row["stream"], row["input_tokens"], row["output_tokens"]) == (
        "cancelled",
        False,
        PROMPT_TOKENS,
        3,
    )
    assert row["cost"] == pytest.approx(cost(PROMPT_TOKENS, 3))


async def test_a_caller_leaving_a_stream_aborts_the_backend_and_is_recorded_cancelled_with_its_tokens(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    model = unique("stall-after:3")
    client = await start(registry, admin, fault, model, total_timeout=120)

    received = ""
    async with client.stream("POST", COMPLETE, json={**REQUEST, "stream": True}, headers=admin) as response:
        async for line in response.aiter_lines():
            if line.startswith('data: {"text"'):
                received += parse_sse(f"event: delta\n{line}\n\n")[0][1]["text"]
            if received == "Hello from the":
                break
    seen = await finished(fault, model)

    assert seen.disconnected
    [row] = await usage_rows(client, admin, admin_engine)
    assert (row["status"], row["stream"], row["input_tokens"], row["output_tokens"]) == (
        "cancelled",
        True,
        PROMPT_TOKENS,
        3,
    )
    assert row["cost"] == pytest.approx(cost(PROMPT_TOKENS, 3))


@pytest.mark.parametrize("stream", [False, True], ids=["whole answer", "stream"])
async def test_a_caller_leaving_before_the_first_token_aborts_the_backend_and_is_charged_its_prompt(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine, stream: bool
) -> None:
    """No usage came (the backend was still reading the prompt), but the prompt was read: it is counted by the
    backend after the caller left, and recorded with its cost."""
    model = unique("stall-after:0")
    client = await start(registry, admin, fault, model, first_token_timeout=120, total_timeout=120)
    request = asyncio.create_task(client.post(COMPLETE, json={**REQUEST, "stream": stream}, headers=admin))

    async def requested() -> bool:
        return len(fault.seen(model, CHAT)) == 1

    await until(requested, "the registry to call the backend")
    await until_taken(client)
    request.cancel()
    seen = await finished(fault, model)

    assert seen.disconnected
    assert seen.sent == 0

    async def recorded() -> bool:
        return len(await usage_rows(client, admin, admin_engine)) == 1

    await until(recorded, "the left completion to be recorded once its prompt is counted")
    [row] = await usage_rows(client, admin, admin_engine)
    assert (row["status"], row["stream"], row["input_tokens"], row["output_tokens"]) == (
        "cancelled",
        stream,
        PROMPT_TOKENS,
        0,
    )
    assert row["cost"] == pytest.approx(cost(PROMPT_TOKENS, 0))
    assert len(fault.seen(model, "/tokenize")) == 1  # counted after the caller left, not before sending
    metrics = (await client.get("/metrics")).text
    assert 'registry_backend_in_flight{backend="fault"} 0.0' in metrics
    assert 'registry_backend_awaiting_first_token{backend="fault"} 0.0' in metrics
    assert 'registry_completions_total{cached="false",fallback="false",status="cancelled"} 1.0' in metrics


async def test_a_client_leaving_every_request_before_its_first_token_still_reaches_its_token_budget(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, make_key: KeyFactory
) -> None:
    """Each request read its prompt on the backend and was left during the prefill, by either door, streamed or
    not: each is charged its prompt, so the key's budget refuses the next request once they add up to it."""
    model = unique("stall-after:0")
    client = await start(registry, admin, fault, model, first_token_timeout=120, total_timeout=120)
    app_key = await make_key(Scope.READ, name="app")
    key_id = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]
    budget = 3 * PROMPT_TOKENS
    assert (await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": budget}, headers=admin)).is_success
    door = {"model": "prompt:greet", "messages": [], "variables": {"name": "Ada"}}
    requests = [
        (COMPLETE, {**REQUEST, "stream": True}),
        (COMPLETE, REQUEST),
        ("/v1/chat/completions", {**door, "stream": True}),
    ]

    for number, (path, body) in enumerate(requests, start=1):
        request = asyncio.create_task(client.post(path, json=body, headers=app_key))

        async def requested(number: int = number) -> bool:
            return len(fault.seen(model, CHAT)) == number

        await until(requested, "the registry to call the backend")
        await until_taken(client)
        request.cancel()

        async def ended(number: int = number) -> bool:
            seen = fault.seen(model, CHAT)[number - 1]
            return seen.finished and seen.disconnected

        await until(ended, "the registry to leave the backend's request")

        async def charged(number: int = number) -> bool:
            used = (await client.get(f"/v1/keys/{key_id}/budget", headers=admin)).json()["used_tokens"]
            return bool(used == number * PROMPT_TOKENS)

        await until(charged, "the left request's prompt to be charged to the key")

    refused = await client.post(COMPLETE, json=REQUEST, headers=app_key)
    assert refused.status_code == 429, refused.text
    assert problem(refused)["type"] == "/problems/over_budget"
    assert len(fault.seen(model, CHAT)) == len(requests)  # the refused request never reached the backend


async def test_a_caller_leaving_while_queued_for_the_backend_is_not_charged_a_prompt_it_never_sent(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    """One slot: the first request holds it (the backend reads its prompt and sends nothing), the second waits in
    the queue and is left there. Only the first is charged its prompt; the second never reached the backend."""
    held, queued = unique("stall-after:0"), unique("ok")
    client = await registry(  # type: ignore[attr-defined]
        {"fault": backend(fault.url, max_concurrency=1, first_token_timeout=120, total_timeout=120)}
    )
    for model, name in ((held, "held"), (queued, "queued")):
        await publish(
            client,
            admin,
            backend="fault",
            model=model,
            prompt=name,
            config=f"c-{name}",
            prices=PRICES,
            max_context_tokens=4096,
        )
    first = asyncio.create_task(client.post("/v1/prompts/held/complete", json=REQUEST, headers=admin))

    async def holding() -> bool:
        return len(fault.seen(held, CHAT)) == 1

    await until(holding, "the first request to reach the backend")
    await until_taken(client)
    second = asyncio.create_task(client.post("/v1/prompts/queued/complete", json=REQUEST, headers=admin))

    async def waiting() -> bool:
        return 'registry_backend_queue_depth{backend="fault"} 1.0' in (await client.get("/metrics")).text

    await until(waiting, "the second request to wait for the slot")
    second.cancel()
    first.cancel()
    await finished(fault, held)

    async def both_recorded() -> bool:
        return len(await usage_rows(client, admin, admin_engine)) == 2

    await until(both_recorded, "both left completions to be recorded")
    rows = {row["config"]: row for row in await usage_rows(client, admin, admin_engine)}
    assert (rows["c-queued"]["status"], rows["c-queued"]["input_tokens"], rows["c-queued"]["cost"]) == (
        "cancelled",
        0,
        0,
    )
    assert (rows["c-held"]["status"], rows["c-held"]["input_tokens"]) == ("cancelled", PROMPT_TOKENS)
    assert fault.seen(queued) == []  # neither the completion nor a count went to the backend for it
    assert len(fault.seen(held, "/tokenize")) == 1


# -- item 9: a problem inside a stream has the fields of one before it


async def test_an_error_event_has_the_same_fields_as_a_problem_answered_before_the_first_token(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    url = fault.url  # type: ignore[attr-defined]
    client = await registry({"fault": backend(url, max_retries=0)})
    await publish(client, admin, backend="fault", model=unique("reset-after:2"), max_context_tokens=4096)
    await publish(
        client, admin, backend="fault", model=unique("status:500:all"), prompt="early", config="cfg2", template="hi"
    )

    response, events = await stream_events(client, admin)
    before = await client.post("/v1/prompts/early/complete", json={"stream": True}, headers=admin)

    name, error = events[-1]
    early = problem(before)
    assert name == "error"
    assert set(error) == set(early)
    assert error["type"] == early["type"] == "/problems/upstream_unavailable"
    assert error["instance"] == COMPLETE
    assert early["instance"] == "/v1/prompts/early/complete"
    assert error["request_id"] == response.headers["x-request-id"]
    assert early["request_id"] == before.headers["x-request-id"]
