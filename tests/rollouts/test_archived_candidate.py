"""A rollout's candidate that is archived: only an earlier production version may come back that way.

Only a rollback brings an archived version back, and only one that was in production before (README, Concepts),
so the rollout of an archived version that never was (a draft or staging version archived by hand, or displaced
from staging) could never be promoted: it is refused at creation, with nothing written. A candidate archived
while its rollout runs is rolled back at the next check (traffic returns to production), and advancing it by hand
past its last step does not promote it, not even as a new version carrying the rollout's config.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import problem
from tests.experiments.conftest import Client, make_metric, make_prompt, runtime_of, settle
from tests.rollouts.conftest import STEPS, FakeClock, check, ok, start_rollout

Headers = dict[str, str]
ROLLOUT = {"candidate_version": 2, "steps": STEPS, "guardrails": [{"metric": "converted"}]}


@pytest.fixture
async def setup(client: Client, admin: Headers) -> Headers:
    """Prompt 'greet' (version 1 in production, version 2 a draft) and a metric 'converted'."""
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    return admin


async def archive(client: Client, headers: Headers, version: int) -> None:
    move = {"to": "archived", "reason": "withdrawn"}
    await ok(await client.post(f"/v1/prompts/greet/versions/{version}/promote", json=move, headers=headers))


async def production_version(client: Client, headers: Headers) -> int:
    resolved = await ok(await client.get("/v1/prompts/greet", headers=headers))
    number: int = resolved["version"]["version"]
    return number


async def fast_config(client: Client, headers: Headers) -> dict[str, object]:
    await ok(await client.post("/v1/configs", json={"name": "fast"}, headers=headers), 201)
    version = {"backend": "vllm", "model": "small-model"}
    await ok(await client.post("/v1/configs/fast/versions", json=version, headers=headers), 201)
    return {"name": "fast", "version": 1}


async def test_a_rollout_of_an_archived_version_never_in_production_is_refused_with_nothing_written(
    client: Client, setup: Headers, clean_database: AsyncEngine
) -> None:
    await archive(client, setup, 2)
    feed = runtime_of(client.app).feed.listen()
    audited = (await ok(await client.get("/v1/audit", headers=setup)))["items"]

    response = await client.post("/v1/prompts/greet/rollouts", json=ROLLOUT, headers=setup)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    [error] = problem(response)["errors"]
    assert error["field"] == "candidate_version"
    assert "archived" in error["message"]
    assert (await ok(await client.get("/v1/prompts/greet/rollouts", headers=setup)))["items"] == []
    assert (await ok(await client.get("/v1/experiments", headers=setup)))["items"] == []
    assert (await ok(await client.get("/v1/audit", headers=setup)))["items"] == audited
    assert feed.queue.empty()
    runtime_of(client.app).feed.forget(feed)
    async with clean_database.connect() as connection:
        rows = await connection.execute(text("SELECT type FROM outbox_events WHERE type LIKE 'rollout.%'"))
        assert list(rows.scalars()) == []


async def test_a_rollout_of_an_archived_version_with_another_config_is_refused(client: Client, setup: Headers) -> None:
    """With another config its promotion would make a new version of the archived one's content: still refused."""
    config = await fast_config(client, setup)
    await archive(client, setup, 2)

    response = await client.post("/v1/prompts/greet/rollouts", json={**ROLLOUT, "config": config}, headers=setup)

    assert response.status_code == 422, response.text
    assert [e["field"] for e in problem(response)["errors"]] == ["candidate_version"]


async def test_a_rollout_of_a_missing_version_is_refused_naming_the_candidate(client: Client, setup: Headers) -> None:
    response = await client.post("/v1/prompts/greet/rollouts", json={**ROLLOUT, "candidate_version": 9}, headers=setup)

    assert response.status_code == 422, response.text
    assert [e["field"] for e in problem(response)["errors"]] == ["candidate_version"]


async def test_a_rollout_of_an_earlier_production_version_is_accepted(client: Client, setup: Headers) -> None:
    """The way back the README shows: version 1, archived when version 2 took production, rolled out again."""
    promote = {"to": "production", "expected_current": 1}
    await ok(await client.post("/v1/prompts/greet/versions/2/promote", json=promote, headers=setup))

    rollout = await start_rollout(client, setup, candidate_version=1)

    assert (rollout["status"], rollout["candidate_version"], rollout["production_version"]) == ("running", 1, 2)
    assert (await check(client, rollout["id"], FakeClock())) is not None
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=setup))
    assert shown["status"] == "running"


async def test_a_candidate_archived_while_its_rollout_runs_is_rolled_back_at_the_next_check(
    client: Client, setup: Headers
) -> None:
    rollout = await start_rollout(client, setup)
    await archive(client, setup, 2)

    action = await check(client, rollout["id"], FakeClock())

    assert action is not None
    assert (action.kind, action.reasons) == (
        "rollback",
        ["version 2 is archived and was never in production, so it cannot be promoted"],
    )
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=setup))
    assert shown["status"] == "rolled_back"
    assert "archived" in shown["reason"]
    assert [e["action"] for e in shown["events"]] == ["started", "rolled_back"]
    experiment = await ok(await client.get(f"/v1/experiments/{rollout['experiment']}", headers=setup))
    assert (experiment["status"], experiment["winner"]) == ("stopped", None)  # traffic is production's again
    assert await production_version(client, setup) == 1


async def test_a_candidate_archived_while_its_rollout_runs_is_not_promoted_by_hand(
    client: Client, setup: Headers
) -> None:
    """Advanced past its last step, the rollout pauses as for any refused promotion; no version is made of it."""
    config = await fast_config(client, setup)
    rollout = await start_rollout(client, setup, steps=[{"share": 1.0}], config=config)
    await archive(client, setup, 2)

    moved = await ok(await client.post(f"/v1/rollouts/{rollout['id']}/advance", headers=setup))

    assert moved["status"] == "paused"
    assert moved["reason"].startswith("the candidate's promotion was refused")
    assert "archived" in moved["reason"]
    assert await production_version(client, setup) == 1
    versions = await ok(await client.get("/v1/prompts/greet/versions", headers=setup))
    assert sorted(v["version"] for v in versions["items"]) == [1, 2]
    await settle(client)
