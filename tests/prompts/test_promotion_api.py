"""Promotion, rollback and history through the API, including concurrent callers."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from tests.api import Client, Headers, create_prompt, create_version, promote
from tests.conftest import KeyFactory, count_rows, problem


async def prompt_with_versions(client: Client, admin: Headers, count: int, name: str = "greeting") -> None:
    await create_prompt(client, admin, name)
    for i in range(count):
        await create_version(client, admin, name, f"v{i + 1} {{{{ name }}}}")


async def states(client: Client, admin: Headers, name: str = "greeting") -> dict[int, str]:
    page = (await client.get(f"/v1/prompts/{name}/versions", params={"limit": 200}, headers=admin)).json()
    return {v["version"]: v["state"] for v in page["items"]}


async def test_promoting_to_production_archives_the_former_one(client: Client, admin: Headers) -> None:
    await prompt_with_versions(client, admin, 2)
    await promote(client, admin, "greeting", 1)
    result = await promote(client, admin, "greeting", 2, expected_current=1, reason="better")
    assert result["changed"] is True
    assert result["changes"] == [
        {"version": 1, "from_state": "production", "to_state": "archived", "action": "displace"},
        {"version": 2, "from_state": "draft", "to_state": "production", "action": "promote"},
    ]
    assert await states(client, admin) == {1: "archived", 2: "production"}


async def test_staging_then_production(client: Client, admin: Headers) -> None:
    await prompt_with_versions(client, admin, 1)
    await promote(client, admin, "greeting", 1, "staging")
    await promote(client, admin, "greeting", 1, "production")
    assert await states(client, admin) == {1: "production"}


async def test_a_stale_expectation_is_a_conflict_naming_the_holder(
    client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    await prompt_with_versions(client, admin, 3)
    await promote(client, admin, "greeting", 1)
    transitions = await count_rows(clean_database, "prompt_transitions")
    response = await client.post(
        "/v1/prompts/greeting/versions/3/promote", json={"to": "production", "expected_current": 2}, headers=admin
    )
    assert response.status_code == 409
    body = problem(response)
    assert body["type"] == "/problems/stale_expected_current"
    assert body["current"] == 1
    assert await states(client, admin) == {1: "production", 2: "draft", 3: "draft"}
    assert await count_rows(clean_database, "prompt_transitions") == transitions


async def test_expected_current_is_required_for_held_states(client: Client, admin: Headers) -> None:
    await prompt_with_versions(client, admin, 1)
    response = await client.post("/v1/prompts/greeting/versions/1/promote", json={"to": "production"}, headers=admin)
    assert response.status_code == 422
    assert problem(response)["errors"] == [{"field": "expected_current", "message": "is required"}]
    archived = await client.post("/v1/prompts/greeting/versions/1/promote", json={"to": "archived"}, headers=admin)
    assert archived.status_code == 200


async def test_invalid_transitions_are_refused(client: Client, admin: Headers) -> None:
    await prompt_with_versions(client, admin, 2)
    await promote(client, admin, "greeting", 1)
    await promote(client, admin, "greeting", 2)  # 1 is archived now
    response = await client.post(
        "/v1/prompts/greeting/versions/1/promote", json={"to": "production", "expected_current": 2}, headers=admin
    )
    assert response.status_code == 409
    assert problem(response)["type"] == "/problems/invalid_transition"
    assert "rollback" in response.json()["detail"]
    bad_state = await client.post("/v1/prompts/greeting/versions/2/promote", json={"to": "draft"}, headers=admin)
    assert bad_state.status_code == 422


async def test_promoting_the_holder_again_is_a_no_op(
    client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    await prompt_with_versions(client, admin, 1)
    await promote(client, admin, "greeting", 1)
    again = await promote(client, admin, "greeting", 1, expected_current=1)
    assert again["changed"] is False
    assert await count_rows(clean_database, "prompt_transitions") == 1


async def test_rollback_restores_the_previous_production_version(client: Client, admin: Headers) -> None:
    await prompt_with_versions(client, admin, 3)
    await promote(client, admin, "greeting", 1)
    await promote(client, admin, "greeting", 2)
    await promote(client, admin, "greeting", 3)
    response = await client.post(
        "/v1/prompts/greeting/rollback", json={"reason": "v3 breaks JSON output"}, headers=admin
    )
    assert response.status_code == 200
    assert response.json()["version"] == 2
    assert await states(client, admin) == {1: "archived", 2: "production", 3: "archived"}
    again = await client.post(
        "/v1/prompts/greeting/rollback", json={"reason": "further back", "version": 1}, headers=admin
    )
    assert again.json()["version"] == 1
    history = (await client.get("/v1/prompts/greeting/history", headers=admin)).json()["items"]
    assert history[0]["action"] == "rollback"
    assert history[0]["reason"] == "further back"
    assert history[0]["actor"] == "admin"


async def test_rollback_needs_a_reason_and_an_earlier_production_version(
    client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    await prompt_with_versions(client, admin, 2)
    no_reason = await client.post("/v1/prompts/greeting/rollback", json={}, headers=admin)
    assert no_reason.status_code == 422
    assert problem(no_reason)["errors"][0]["field"] == "reason"
    nothing_earlier = await client.post("/v1/prompts/greeting/rollback", json={"reason": "x"}, headers=admin)
    assert nothing_earlier.status_code == 422
    await promote(client, admin, "greeting", 1)
    never = await client.post("/v1/prompts/greeting/rollback", json={"reason": "x", "version": 2}, headers=admin)
    assert never.status_code == 422
    assert "never in production" in problem(never)["detail"]
    assert await count_rows(clean_database, "prompt_transitions") == 1


async def test_history_records_every_transition_in_order(client: Client, admin: Headers) -> None:
    await prompt_with_versions(client, admin, 2)
    await promote(client, admin, "greeting", 1, "staging")
    await promote(client, admin, "greeting", 1)
    await promote(client, admin, "greeting", 2, reason="new copy")
    history = (await client.get("/v1/prompts/greeting/history", headers=admin)).json()["items"]
    moves = [(h["version"], h["from_state"], h["to_state"], h["action"]) for h in reversed(history)]
    assert moves == [
        (1, "draft", "staging", "promote"),
        (1, "staging", "production", "promote"),
        (1, "production", "archived", "displace"),
        (2, "draft", "production", "promote"),
    ]
    assert history[0]["reason"] == "new copy"


async def test_promote_scope_is_needed(client: Client, admin: Headers, make_key: KeyFactory) -> None:
    await prompt_with_versions(client, admin, 1)
    writer = await make_key(Scope.WRITE, Scope.READ)
    response = await client.post(
        "/v1/prompts/greeting/versions/1/promote", json={"to": "production", "expected_current": None}, headers=writer
    )
    assert response.status_code == 403
    promoter = await make_key(Scope.PROMOTE, name="release-manager")
    ok = await client.post(
        "/v1/prompts/greeting/versions/1/promote", json={"to": "production", "expected_current": None}, headers=promoter
    )
    assert ok.status_code == 200
    history = (await client.get("/v1/prompts/greeting/history", headers=admin)).json()["items"]
    assert history[0]["actor"] == "release-manager"


async def test_concurrent_version_creates_get_numbers_one_to_twenty(
    client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    await create_prompt(client, admin, "busy")
    responses = await asyncio.gather(
        *(
            client.post("/v1/prompts/busy/versions", json={"kind": "text", "template": f"variant {i}"}, headers=admin)
            for i in range(20)
        )
    )
    assert all(r.status_code == 201 for r in responses), [r.text for r in responses if r.status_code != 201]
    assert sorted(r.json()["version"] for r in responses) == list(range(1, 21))
    prompt = (await client.get("/v1/prompts", params={"prefix": "busy"}, headers=admin)).json()["items"][0]
    assert prompt["latest_version"] == 20
    assert await count_rows(clean_database, "prompt_versions") == 20


async def test_concurrent_promotions_leave_one_production_version_and_a_consistent_history(
    client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    await prompt_with_versions(client, admin, 20, "contested")
    responses = await asyncio.gather(
        *(
            client.post(
                f"/v1/prompts/contested/versions/{n}/promote",
                json={"to": "production", "expected_current": None},
                headers=admin,
            )
            for n in range(1, 21)
        )
    )
    winners = [r for r in responses if r.status_code == 200]
    losers = [r for r in responses if r.status_code != 200]
    assert len(winners) == 1, [r.text for r in responses]
    assert {r.status_code for r in losers} == {409}
    assert {problem(r)["current"] for r in losers} == {winners[0].json()["version"]}
    final = await states(client, admin, "contested")
    assert list(final.values()).count("production") == 1

    # Now everyone retries, each believing the holder is the version it last saw: they chain.
    winner = holder = winners[0].json()["version"]
    for n in range(1, 21):
        if n == winner:
            continue
        response = await client.post(
            f"/v1/prompts/contested/versions/{n}/promote",
            json={"to": "production", "expected_current": holder},
            headers=admin,
        )
        assert response.status_code == 200, response.text
        holder = n
    async with clean_database.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT t.version_number, t.from_state, t.to_state FROM prompt_transitions t "
                    "JOIN prompts p ON p.id = t.prompt_id WHERE p.name = 'contested' ORDER BY t.id"
                )
            )
        ).all()
        production_rows = (
            await connection.execute(
                text(
                    "SELECT count(*) FROM prompt_versions v JOIN prompts p ON p.id = v.prompt_id "
                    "WHERE p.name = 'contested' AND v.state = 'production'"
                )
            )
        ).scalar_one()
    assert production_rows == 1
    # Replaying the history from nothing gives the current states: no lost or duplicated moves.
    replayed: dict[int, str] = {}
    for number, before, after in rows:
        assert replayed.get(number, "draft") == before
        replayed[number] = after
    assert replayed == {n: s for n, s in (await states(client, admin, "contested")).items() if s != "draft"}


async def test_the_database_refuses_two_production_versions(
    client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    await prompt_with_versions(client, admin, 2)
    await promote(client, admin, "greeting", 1)
    async with clean_database.connect() as connection:
        with pytest.raises(IntegrityError, match="uq_prompt_versions_one_production"):
            await connection.execute(text("UPDATE prompt_versions SET state = 'production' WHERE number = 2"))
