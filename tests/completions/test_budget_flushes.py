"""Budgets across usage flushes: the spend a key is checked against never drops when its usage is written."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from registry.auth.keys import Scope
from tests.completions.conftest import RegistryFactory, backend, publish, unique
from tests.completions.fault_server import FaultServer
from tests.conftest import KeyFactory

COMPLETE = "/v1/prompts/greet/complete"
REQUEST = {"variables": {"name": "Ada"}}
TOKENS_PER_COMPLETION = 10  # the fault server's "ok": 7 prompt tokens + 3 completion tokens


@pytest.fixture
async def client(registry: RegistryFactory, fault: FaultServer, admin: dict[str, str]) -> httpx.AsyncClient:
    # Usage is written only when a test asks (GET /v1/usage writes this process's buffer first).
    http = await registry({"fault": backend(fault.url)}, completion_usage_flush_seconds=3600)  # type: ignore[attr-defined]
    await publish(http, admin, backend="fault", model=unique("ok"), max_context_tokens=4096, prices=(1.0, 3.0))
    return http


async def write_usage(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    assert (await client.get("/v1/usage", headers=admin)).status_code == 200


async def test_a_token_budget_holds_across_usage_flushes(
    client: httpx.AsyncClient, admin: dict[str, str], make_key: KeyFactory
) -> None:
    app_key = await make_key(Scope.READ, name="app")
    key_id = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]
    budget = 25
    assert (await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": budget}, headers=admin)).is_success

    statuses = []
    for _ in range(8):  # one at a time, so none is in flight when the limit is reached
        statuses.append((await client.post(COMPLETE, json=REQUEST, headers=app_key)).status_code)
        await write_usage(client, admin)

    allowed = statuses.count(200)
    assert statuses == [200] * allowed + [429] * (len(statuses) - allowed)
    # Checked before each run: allowed while under the budget, so the last one may end past it.
    assert allowed == -(-budget // TOKENS_PER_COMPLETION)


async def test_the_budget_reports_the_true_spend_right_after_a_flush(
    client: httpx.AsyncClient, admin: dict[str, str], make_key: KeyFactory
) -> None:
    app_key = await make_key(Scope.READ, name="app")
    key_id = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]
    assert (await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": 1000}, headers=admin)).is_success

    used = []
    for _ in range(3):
        assert (await client.post(COMPLETE, json=REQUEST, headers=app_key)).status_code == 200
        before_flush = (await client.get(f"/v1/keys/{key_id}/budget", headers=admin)).json()["used_tokens"]
        await write_usage(client, admin)
        after_flush = (await client.get(f"/v1/keys/{key_id}/budget", headers=admin)).json()["used_tokens"]
        used.append((before_flush, after_flush))

    assert used == [(n * TOKENS_PER_COMPLETION, n * TOKENS_PER_COMPLETION) for n in (1, 2, 3)]


async def test_concurrent_completions_overshoot_a_budget_by_at_most_those_in_flight(
    client: httpx.AsyncClient, admin: dict[str, str], make_key: KeyFactory
) -> None:
    app_key = await make_key(Scope.READ, name="app")
    key_id = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]
    budget, in_flight = 25, 3
    assert (await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": budget}, headers=admin)).is_success

    allowed = 0
    for _ in range(5):  # rounds of concurrent completions, usage written after each
        answers = await asyncio.gather(
            *(client.post(COMPLETE, json=REQUEST, headers=app_key) for _ in range(in_flight))
        )
        allowed += sum(answer.status_code == 200 for answer in answers)
        await write_usage(client, admin)

    used = (await client.get(f"/v1/keys/{key_id}/budget", headers=admin)).json()["used_tokens"]
    assert used == allowed * TOKENS_PER_COMPLETION
    # Under the budget before the last round started; that round's completions were all in flight.
    assert used - in_flight * TOKENS_PER_COMPLETION < budget
