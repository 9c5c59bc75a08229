"""A key's budget while its completions fail over to a dearer fallback config.

A completion in flight holds the most it may spend against its key's budget, so parallel requests overshoot it by
one completion at most. A config's fallback may have other prices and limits: a hold at the first config's prices
alone let every request of a burst fail over to a dearer fallback and spend, each of them, far past the budget.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import HeldBackend, backend, held, unique  # noqa: F401 - held: a fixture
from tests.completions.fault_server import FaultServer
from tests.seams.conftest import Served, eventually, ok
from tests.seams.test_seams_dec5 import COMPLETE, config, key_with_budget, prompt


async def test_parallel_completions_failing_over_to_a_dearer_fallback_overshoot_a_budget_by_one_at_most(
    served: Served,
    admin: dict[str, str],
    clean_database: AsyncEngine,
    fault: FaultServer,
    held: HeldBackend,  # noqa: F811 - the fixture
) -> None:
    held_long = backend(held.url, first_token_timeout=30.0, total_timeout=60.0)  # held until the test releases it
    backends = {"held": held_long, "flaky": backend(fault.url, max_retries=0)}  # type: ignore[attr-defined]
    client = await served(backends=backends)
    # The fallback costs 0.1 a token, the config asked for a millionth of that.
    await config(client, admin, "dear", backend="held", model=unique("ok"), prices=(100_000.0, 100_000.0))
    await config(
        client,
        admin,
        "cheap",
        backend="flaky",
        model=unique("status:503:all"),
        prices=(1.0, 1.0),
        fallback={"name": "dear"},
    )
    await prompt(client, admin, "Say hello to {{ name }}.", config="cheap")
    key_id, headers = await key_with_budget(client, admin, ["read"], monthly_cost=0.5)  # less than one fallback answer

    at_once = [
        asyncio.create_task(
            client.post(COMPLETE, json={"variables": {"name": f"n{i}"}, "stream": i % 2 == 1}, headers=headers)
        )
        for i in range(6)
    ]

    async def refused_but_one() -> bool:  # every request but the one held at the fallback's backend has its answer
        return sum(task.done() for task in at_once) == 5

    try:
        await eventually(refused_but_one, "the key's other requests to be refused")
    finally:
        held.release.set()
    answers = await asyncio.gather(*at_once)
    assert sorted(answer.status_code for answer in answers) == [200] + [429] * 5
    [answered] = [answer for answer in answers if answer.status_code == 200]
    assert "fallback_used" in answered.text
    spent = await ok(await client.get(f"/v1/keys/{key_id}/budget", headers=admin))
    assert 0.5 < spent["used_cost"] < 5.0  # one fallback answer: over the budget by one completion, no more
