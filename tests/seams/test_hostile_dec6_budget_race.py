"""A key that sends many completions at once against a budget with room for one.

Each completion is checked before it runs and charged after it ends, so every request sent at once passed the
check before any was charged: twenty parallel requests on a budget of one completion spent twenty times it. A
completion in flight now holds the most it may spend against its key's budget until it is recorded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import HeldBackend, held  # noqa: F401 - held: a fixture
from tests.seams.conftest import Served, eventually, ok
from tests.seams.test_seams_dec5 import CHAT, COMPLETE, cached_on_held, key_with_budget


def requests(client: httpx.AsyncClient, headers: dict[str, str], names: list[str]) -> list[asyncio.Task[Any]]:
    """One completion per name, through both doors, whole and streamed in turn (no two alike: no cache hit)."""
    made = []
    for i, name in enumerate(names):
        stream = i % 2 == 1
        if i % 4 < 2:
            call = client.post(COMPLETE, json={"variables": {"name": name}, "stream": stream}, headers=headers)
        else:
            door = {"model": "prompt:greet", "messages": [], "variables": {"name": name}, "stream": stream}
            call = client.post(CHAT, json=door, headers=headers)
        made.append(asyncio.create_task(call))
    return made


async def test_parallel_completions_overshoot_a_budget_by_one_completion_at_most(
    served: Served,
    admin: dict[str, str],
    clean_database: AsyncEngine,
    held: HeldBackend,  # noqa: F811 - the fixture
) -> None:
    client = await cached_on_held(served, admin, held, True, "Say hello to {{ name }}.")
    tight_id, tight = await key_with_budget(client, admin, ["read"], monthly_tokens=10)  # one completion: 7 + 3
    roomy_id, roomy = await key_with_budget(client, admin, ["read"], monthly_tokens=100_000)

    at_once = requests(client, tight, [f"t{i}" for i in range(8)])
    at_once += requests(client, roomy, [f"r{i}" for i in range(4)])

    async def refused_but_one() -> bool:  # every tight request but the one held at the backend has its answer
        return sum(task.done() for task in at_once[:8]) == 7

    await eventually(refused_but_one, "the tight key's other requests to be refused")
    held.release.set()
    answers = await asyncio.gather(*at_once)

    tight_answers, roomy_answers = answers[:8], answers[8:]
    assert sorted(answer.status_code for answer in tight_answers) == [200] + [429] * 7
    refused = [answer for answer in tight_answers if answer.status_code == 429]
    assert all("in flight" in answer.text and answer.headers["retry-after"] == "1" for answer in refused)
    assert [answer.status_code for answer in roomy_answers] == [200] * 4  # a budget with room runs them all
    spent = await ok(await client.get(f"/v1/keys/{tight_id}/budget", headers=admin))
    assert spent["used_tokens"] == 10
    assert (await ok(await client.get(f"/v1/keys/{roomy_id}/budget", headers=admin)))["used_tokens"] == 40

    # Nothing stays held: the spent key is refused for the month, the other runs on.
    after = await client.post(COMPLETE, json={"variables": {"name": "t9"}}, headers=tight)
    assert after.status_code == 429
    assert "used 10 of its 10 tokens" in after.text
    assert after.headers["retry-after"] != "1"
    assert (await client.post(COMPLETE, json={"variables": {"name": "r9"}}, headers=roomy)).status_code == 200
