"""A cost-per-hour rule on backends counts a failed-over request's spend under each backend that spent it.

Config ``cfg`` runs on backend ``fragile``, whose answer breaks off after two tokens; its fallback ``spare`` runs on
``steady`` and answers. The request is recorded under ``spare`` (backend ``steady``) with both backends' tokens and
cost; a rule scoped to ``fragile`` must see what ``fragile`` spent, and one grouped by backend each backend's part,
as usage by config shows each config's part. Windows of an hour, so a window's cost is its cost per hour.
"""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.alerts.conftest import FakeClock, create_rule, evaluate, ok
from tests.completions.conftest import publish, unique
from tests.completions.fault_server import PROMPT_TOKENS
from tests.experiments.conftest import Client

CFG_PRICES, SPARE_PRICES = (1000.0, 3000.0), (10000.0, 30000.0)  # per million input and output tokens
FIRST_COST = (PROMPT_TOKENS * CFG_PRICES[0] + 2 * CFG_PRICES[1]) / 1e6  # the prompt, two tokens, then the break
SPARE_COST = (PROMPT_TOKENS * SPARE_PRICES[0] + 3 * SPARE_PRICES[1]) / 1e6  # the fallback's whole answer


async def test_cost_rules_on_backends_count_the_first_backends_part_of_a_failed_over_request_under_it(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="steady", model=unique("ok"), config="spare", prompt=None, prices=SPARE_PRICES)
    await publish(
        client, admin, backend="fragile", model=unique("reset-after:2"), fallback={"name": "spare"}, prices=CFG_PRICES
    )
    scoped = await create_rule(
        client, admin, "fragile-spend", "cost_per_hour", threshold=FIRST_COST / 2, window_seconds=3600,
        scope={"backend": "fragile"},
    )  # fmt: skip
    grouped = await create_rule(
        client, admin, "spend-by-backend", "cost_per_hour", threshold=FIRST_COST / 2, window_seconds=3600,
        group_by="backend",
    )  # fmt: skip
    response = await client.post("/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["fallback_used"] is True
    assert response.json()["cost"] == pytest.approx(FIRST_COST + SPARE_COST)

    fired = await evaluate(client, FakeClock())

    assert {rule: sorted(transitions) for rule, transitions in fired.items()} == {
        scoped["id"]: [("", "fire")],
        grouped["id"]: [("fragile", "fire"), ("steady", "fire")],
    }
    incidents = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    values = {(i["rule"], i["subject"]): i["value"] for i in incidents}
    assert values == {
        ("fragile-spend", ""): pytest.approx(FIRST_COST),
        ("spend-by-backend", "fragile"): pytest.approx(FIRST_COST),
        ("spend-by-backend", "steady"): pytest.approx(SPARE_COST),
    }
