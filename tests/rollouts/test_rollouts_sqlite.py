"""The embedded default (SQLite, no Redis) runs rollouts: routing, a check, the promotion lock, the end."""

from __future__ import annotations

from tests.experiments.conftest import Client, flush_and_aggregate, make_metric, make_prompt
from tests.experiments.test_sqlite import sqlite_client as sqlite_client
from tests.experiments.test_sqlite import sqlite_settings as sqlite_settings
from tests.rollouts.conftest import FakeClock, check, ok, start_rollout


async def test_a_rollout_runs_on_sqlite(sqlite_client: tuple[Client, dict[str, str]]) -> None:
    client, admin = sqlite_client
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    rollout = await start_rollout(client, admin, steps=[{"share": 0.5}, {"share": 1.0}])
    seen = set()
    for i in range(40):
        body = await ok(
            await client.post(
                "/v1/prompts/greet/render", json={"variables": {"x": "hi"}, "unit": f"user-{i}"}, headers=admin
            )
        )
        seen.add(body["version"])
    assert seen == {1, 2}
    promote = await client.post(
        "/v1/prompts/greet/versions/2/promote", json={"to": "production", "expected_current": 1}, headers=admin
    )
    assert promote.status_code == 409
    await flush_and_aggregate(client)  # the guardrail's data: a step moves on only with some in each arm
    assert (await check(client, rollout["id"], FakeClock())).kind == "advance"  # type: ignore[union-attr]
    for i in range(40, 45):  # at full share the candidate's units are the step's evidence
        await ok(
            await client.post(
                "/v1/prompts/greet/render", json={"variables": {"x": "hi"}, "unit": f"user-{i}"}, headers=admin
            )
        )
    await flush_and_aggregate(client)
    assert (await check(client, rollout["id"], FakeClock())).kind == "promote"  # type: ignore[union-attr]
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=admin))
    assert shown["status"] == "completed"
    resolved = await ok(await client.get("/v1/prompts/greet", params={"label": "production"}, headers=admin))
    assert resolved["version"]["version"] == 2
