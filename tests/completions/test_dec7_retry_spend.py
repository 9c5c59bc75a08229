"""Spend where retries, cancellation and failure meet: every token a backend reported on an attempt, and every
prompt a backend took without reporting it (counted, ``registry.completions.prefill``), is charged to the key,
counted in usage by config and carried by the completion's record, however the request then ended.

The stand-in backend adds to the fault server's behaviours:

    reported-reset:N:THEN   the first N requests of the model get a first chunk reporting the prompt (vLLM's
                            continuous usage) and then a dropped connection (retried); the rest behave as THEN
    unreported-reset:N:THEN the same without the first chunk: the backend took the request, and reported nothing
    hold                    no answer at all until the registry leaves (a retry that was never taken)
    silent                  answer 200, then send nothing until the registry leaves (a backend still reading the
                            prompt: no chunk, so no usage)

Every case runs through both doors (``/v1/prompts/{name}/complete`` and ``/v1/chat/completions``), streamed and not.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import (
    RegistryFactory,
    backend,
    publish,
    serve_in_thread,
    unique,
    until,
    until_taken,
    usage_rows,
)
from tests.completions.fault_server import CHAT, PROMPT_TOKENS, FaultServer, SeenRequest, _Reply, _wait_disconnect

PRICES = (1000.0, 3000.0)  # per million input and output tokens
SPARE_PRICES = (10000.0, 30000.0)
COUNTED = PROMPT_TOKENS  # what /tokenize counts for the prompt ("Say hello to Ada." and the chat template)
DOORS = {
    "prompt": ("/v1/prompts/greet/complete", {"variables": {"name": "Ada"}}),
    "openai": ("/v1/chat/completions", {"model": "prompt:greet", "messages": [], "variables": {"name": "Ada"}}),
}
WAYS = [(door, stream) for door in DOORS for stream in (False, True)]
WAY_IDS = [f"{door}-{'streamed' if stream else 'whole'}" for door, stream in WAYS]


BACKEND_OF = {"cfg": "flaky", "spare": "spare"}  # each config's backend (``start``)


def cost(input_tokens: int, output_tokens: int, prices: tuple[float, float] = PRICES) -> float:
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1e6


@dataclass(frozen=True)
class Spend:
    """What one config's backend processed, and its cost at that config's prices."""

    input_tokens: int
    output_tokens: int
    prices: tuple[float, float] = PRICES

    @property
    def cost(self) -> float:
        return cost(self.input_tokens, self.output_tokens, self.prices)


class RetrySpendServer(FaultServer):
    """The fault server plus ``reported-reset:N:THEN``, ``unreported-reset:N:THEN``, ``hold`` and ``silent`` (see the
    module's docstring)."""

    async def _complete(self, reply: _Reply, receive: Any, seen: SeenRequest, name: str, arg: str, number: int) -> None:
        if name in ("reported-reset", "unreported-reset"):
            times, _, then = arg.partition(":")
            if number < int(times):
                await reply.send(START)
                if name == "reported-reset":
                    await reply.role()  # a chat stream's first chunk: no token, the usage so far (the prompt)
                raise ConnectionResetError("injected reset before the first token")
            name, _, arg = then.partition(":")
        if name == "hold":
            await _wait_disconnect(receive)
            seen.disconnected = True
        elif name == "silent":
            await reply.send(START)
            await reply.send({"type": "http.response.body", "body": b"", "more_body": True})
            await _wait_disconnect(receive)
            seen.disconnected = True
        else:
            await super()._complete(reply, receive, seen, name, arg, number)


START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}


@pytest.fixture(scope="module")
def spend_server() -> Iterator[RetrySpendServer]:
    server = RetrySpendServer()
    with serve_in_thread(server, lifespan="off") as url:
        server.url = url  # type: ignore[attr-defined]
        yield server


async def start(
    registry: RegistryFactory,
    admin: dict[str, str],
    server: RetrySpendServer,
    model: str,
    fallback: str | None = None,
    **options: Any,
) -> httpx.AsyncClient:
    """``greet`` (config ``cfg``) on backend ``flaky`` running ``model``; with ``fallback``, config ``spare`` runs
    that model on backend ``spare`` after it. Contexts are declared, so no prompt is counted before it is sent."""
    url = server.url  # type: ignore[attr-defined]
    settings = {"max_retries": 2, "retry_base_delay": 0.0, "retry_max_delay": 0.0} | options
    client = await registry({"flaky": backend(url, **settings), "spare": backend(url)})
    if fallback is not None:
        await publish(
            client,
            admin,
            backend="spare",
            model=fallback,
            config="spare",
            prompt=None,
            prices=SPARE_PRICES,
            max_context_tokens=4096,
        )
    await publish(
        client,
        admin,
        backend="flaky",
        model=model,
        prices=PRICES,
        max_context_tokens=4096,
        fallback={"name": "spare"} if fallback is not None else None,
    )
    return client


async def call(client: httpx.AsyncClient, admin: dict[str, str], door: str, stream: bool) -> httpx.Response:
    path, body = DOORS[door]
    return await client.post(path, json={**body, "stream": stream}, headers=admin)


async def recorded(client: httpx.AsyncClient, admin: dict[str, str], engine: AsyncEngine) -> dict[str, Any]:
    """The one usage record, once written (a prompt to count delays it)."""

    async def written() -> bool:
        return len(await usage_rows(client, admin, engine)) == 1

    await until(written, "the completion to be recorded")
    [row] = await usage_rows(client, admin, engine)
    return row


async def key_spend(client: httpx.AsyncClient, admin: dict[str, str]) -> tuple[int, float]:
    [key] = (await client.get("/v1/keys/", headers=admin)).json()["items"]
    budget = (await client.get(f"/v1/keys/{key['id']}/budget", headers=admin)).json()
    return budget["used_tokens"], budget["used_cost"]


async def backend_metrics(client: httpx.AsyncClient, backend: str) -> tuple[float, float, float]:
    """What ``/metrics`` says ``backend`` processed: input tokens, output tokens, cost."""
    text = (await client.get("/metrics")).text

    def value(series: str) -> float:
        found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    tokens = 'registry_completion_tokens_total{{backend="{}",direction="{}"}}'
    return (
        value(tokens.format(backend, "input")),
        value(tokens.format(backend, "output")),
        value(f'registry_completion_cost_total{{backend="{backend}"}}'),
    )


async def usage_by_config(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, tuple[int, int, float]]:
    report = (await client.get("/v1/usage", params={"group_by": "config"}, headers=admin)).json()
    return {row["config"]: (row["input_tokens"], row["output_tokens"], row["cost"]) for row in report["items"]}


async def assert_charged(client: httpx.AsyncClient, admin: dict[str, str], spends: dict[str, Spend]) -> None:
    """``spends`` (by config) is charged everywhere spend shows: the key's budget holds their sum, usage by config
    reports each, and each config's backend's token and cost metrics say it processed that config's part."""
    tokens = sum(spend.input_tokens + spend.output_tokens for spend in spends.values())
    assert await key_spend(client, admin) == (tokens, pytest.approx(sum(spend.cost for spend in spends.values())))
    assert await usage_by_config(client, admin) == {
        config: (spend.input_tokens, spend.output_tokens, pytest.approx(spend.cost)) for config, spend in spends.items()
    }
    for config, spend in spends.items():
        assert await backend_metrics(client, BACKEND_OF[config]) == (
            spend.input_tokens,
            spend.output_tokens,
            pytest.approx(spend.cost),
        )


# -- 1: the caller leaves while a retry is under way


@pytest.mark.parametrize(
    ("then", "resets", "counted"),
    [("hold", 2, 0), ("silent", 1, 1)],
    ids=["retry-not-taken", "retry-in-its-prefill"],
)
@pytest.mark.parametrize(("door", "stream"), WAYS, ids=WAY_IDS)
async def test_a_caller_leaving_during_a_retry_is_charged_what_the_earlier_attempts_reported(
    registry: RegistryFactory,
    admin: dict[str, str],
    spend_server: RetrySpendServer,
    admin_engine: AsyncEngine,
    door: str,
    stream: bool,
    then: str,
    resets: int,
    counted: int,
) -> None:
    """Each earlier attempt reported the prompt, then dropped the connection; the caller leaves while the retry
    waits for its answer (not taken), or while the backend that took it reads the prompt (nothing reported: counted).
    Every prompt read is charged, and only the one that nothing reported is counted."""
    model = unique(f"reported-reset:{resets}:{then}")
    client = await start(registry, admin, spend_server, model, first_token_timeout=120, total_timeout=120)
    request = asyncio.create_task(call(client, admin, door, stream))

    async def retrying() -> bool:
        return len(spend_server.seen(model, CHAT)) == resets + 1

    await until(retrying, "the retry to reach the backend")
    if then == "silent":
        await until_taken(client, "flaky")
    request.cancel()

    async def left() -> bool:
        retry = spend_server.seen(model, CHAT)[-1]
        return retry.finished and retry.disconnected

    await until(left, "the registry to leave the retry")
    row = await recorded(client, admin, admin_engine)
    charged = (resets + counted) * PROMPT_TOKENS
    assert (row["status"], row["stream"], row["input_tokens"], row["output_tokens"]) == (
        "cancelled",
        stream,
        charged,
        0,
    )
    assert row["cost"] == pytest.approx(cost(charged, 0))
    assert len(spend_server.seen(model, "/tokenize")) == counted  # the reported prompts are not counted again
    await assert_charged(client, admin, {"cfg": Spend(charged, 0)})


# -- 2: a retry is refused as too long for the context


@pytest.mark.parametrize(("door", "stream"), WAYS, ids=WAY_IDS)
async def test_a_retry_refused_as_too_long_records_the_earlier_attempts_spend_as_a_failure(
    registry: RegistryFactory,
    admin: dict[str, str],
    spend_server: RetrySpendServer,
    admin_engine: AsyncEngine,
    door: str,
    stream: bool,
) -> None:
    """The first attempt reported the prompt and dropped the connection; the retry is refused with a context-length
    400. The caller gets the 422 the backend's answer means, and the prompt the first attempt read is charged: the
    run is recorded as an error of type ``context_length_exceeded`` with those tokens."""
    model = unique("reported-reset:1:context")
    client = await start(registry, admin, spend_server, model)

    response = await call(client, admin, door, stream)

    assert response.status_code == 422, response.text
    assert len(spend_server.seen(model, CHAT)) == 2
    row = await recorded(client, admin, admin_engine)
    assert (row["status"], row["error_type"]) == ("error", "context_length_exceeded")
    assert (row["input_tokens"], row["output_tokens"]) == (PROMPT_TOKENS, 0)
    assert row["cost"] == pytest.approx(cost(PROMPT_TOKENS, 0))
    await assert_charged(client, admin, {"cfg": Spend(PROMPT_TOKENS, 0)})


async def test_a_first_attempt_refused_as_too_long_is_still_an_input_error_and_not_recorded(
    registry: RegistryFactory, admin: dict[str, str], spend_server: RetrySpendServer, admin_engine: AsyncEngine
) -> None:
    """Nothing was spent before the refusal: the key is not charged and no record is written, as before."""
    model = unique("context")
    client = await start(registry, admin, spend_server, model)

    response = await call(client, admin, "prompt", False)

    assert response.status_code == 422, response.text
    assert await usage_rows(client, admin, admin_engine) == []
    await assert_charged(client, admin, {})


# -- 3: no first token within the timeout, and no usage reported


@pytest.mark.parametrize(("door", "stream"), WAYS, ids=WAY_IDS)
async def test_a_first_token_timeout_before_any_usage_is_charged_the_prompt_the_backend_took(
    registry: RegistryFactory,
    admin: dict[str, str],
    spend_server: RetrySpendServer,
    admin_engine: AsyncEngine,
    door: str,
    stream: bool,
) -> None:
    """The backend took the request and sent nothing before the first-token timeout: the prompt it read is counted
    once the run failed, and the failure is recorded and charged with it."""
    model = unique("silent")
    client = await start(registry, admin, spend_server, model, first_token_timeout=0.5)

    response = await call(client, admin, door, stream)

    assert response.status_code == 504, response.text
    assert len(spend_server.seen(model, CHAT)) == 1  # a timeout is not retried
    row = await recorded(client, admin, admin_engine)
    assert (row["status"], row["error_type"]) == ("error", "upstream_timeout")
    assert (row["input_tokens"], row["output_tokens"]) == (COUNTED, 0)
    assert row["cost"] == pytest.approx(cost(COUNTED, 0))
    assert len(spend_server.seen(model, "/tokenize")) == 1
    await assert_charged(client, admin, {"cfg": Spend(COUNTED, 0)})


@pytest.mark.parametrize(("door", "stream"), WAYS, ids=WAY_IDS)
async def test_a_first_token_timeout_before_any_usage_is_charged_to_the_first_config_when_the_fallback_answers(
    registry: RegistryFactory,
    admin: dict[str, str],
    spend_server: RetrySpendServer,
    admin_engine: AsyncEngine,
    door: str,
    stream: bool,
) -> None:
    """The first config's backend took the request and timed out silent; its fallback answers. The prompt the first
    backend read is counted on it and charged at its config's prices, under its config, beside the fallback's."""
    model, spare = unique("silent"), unique("ok")
    client = await start(registry, admin, spend_server, model, fallback=spare, first_token_timeout=0.5)

    response = await call(client, admin, door, stream)

    assert response.status_code == 200, response.text
    row = await recorded(client, admin, admin_engine)
    charged = cost(COUNTED, 0) + cost(PROMPT_TOKENS, 3, SPARE_PRICES)
    assert (row["status"], row["config"], row["fallback_used"]) == ("ok", "spare", True)
    assert (row["input_tokens"], row["output_tokens"]) == (COUNTED + PROMPT_TOKENS, 3)
    assert row["cost"] == pytest.approx(charged)
    assert len(spend_server.seen(model, "/tokenize")) == 1
    assert spend_server.seen(spare, "/tokenize") == []  # the fallback reported its prompt
    await assert_charged(client, admin, {"cfg": Spend(COUNTED, 0), "spare": Spend(PROMPT_TOKENS, 3, SPARE_PRICES)})


# -- and a retried attempt that a backend took without reporting anything


@pytest.mark.parametrize(("door", "stream"), WAYS, ids=WAY_IDS)
async def test_a_retried_attempt_taken_without_any_usage_is_charged_its_prompt_beside_the_answer(
    registry: RegistryFactory,
    admin: dict[str, str],
    spend_server: RetrySpendServer,
    admin_engine: AsyncEngine,
    door: str,
    stream: bool,
) -> None:
    """The first attempt was taken and its connection dropped before any chunk; the retry answers. The prompt the
    first attempt read is counted and charged with the answer (the answer's own usage came with it)."""
    model = unique("unreported-reset:1:ok")
    client = await start(registry, admin, spend_server, model)

    response = await call(client, admin, door, stream)

    assert response.status_code == 200, response.text
    assert len(spend_server.seen(model, CHAT)) == 2
    row = await recorded(client, admin, admin_engine)
    charged = COUNTED + PROMPT_TOKENS
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("ok", charged, 3)
    assert row["cost"] == pytest.approx(cost(charged, 3))
    assert len(spend_server.seen(model, "/tokenize")) == 1
    await assert_charged(client, admin, {"cfg": Spend(charged, 3)})
