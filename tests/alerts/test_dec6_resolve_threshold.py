"""A resolve threshold of 0 is refused: no value falls below 0, so an incident of such a rule never cleared while
its window had data (an error rate of 0 is not below 0), it only resolved when traffic stopped."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from registry.alerts.evaluation import Condition, SeriesState, step
from registry.db.base import utcnow
from tests.alerts.conftest import create_rule
from tests.conftest import problem
from tests.experiments.conftest import Client

RULES = "/v1/alerts/rules"


async def test_a_resolve_threshold_of_zero_is_refused_naming_it(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    body = {"name": "dec6-never-clears", "kind": "error_rate", "threshold": 0.1, "resolve_threshold": 0}
    created = await client.post(RULES, json=body, headers=admin)
    rule = await create_rule(client, admin, "dec6-clears", "error_rate", threshold=0.1, resolve_threshold=0.05)
    changed = await client.patch(f"{RULES}/{rule['id']}", json={"resolve_threshold": 0.0}, headers=admin)

    for response in (created, changed):
        assert response.status_code == 422
        assert [e["field"] for e in problem(response)["errors"]] == ["resolve_threshold"]
    # Why: a firing series seeing the lowest value there is stays firing under a resolve threshold of 0.
    firing = SeriesState("firing", utcnow())
    assert step(firing, 0.0, Condition(0.1, 0.0), utcnow()) == (firing, None)
