"""A backend's refusals by its open breaker count for it while its requests fail over to a fallback that answers.

Config ``cfg`` (prompt greet) runs on backend ``fragile``, whose model always fails, and falls back to ``spare`` on
``steady``, which answers. Fragile's breaker opens after three failures and stays open; from then on it refuses
greet's requests at once and ``spare`` answers them. Each completion is one record under ``steady``, with no error:
the record names the backend tried first (``first_backend``) and how it failed there (``first_error_type``), so
``breaker_open`` rules see fragile's refusals, and rules by backend need not work out which backend failed.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.alerts.conftest import FakeClock, complete, create_rule, evaluate, ok, rows
from tests.completions.conftest import publish, unique
from tests.evals.conftest import dataset, finished, start_run
from tests.experiments.conftest import Client, runtime_of

WINDOW = {"threshold": 1, "window_seconds": 300}
RECORD = "backend, status, error_type, fallback_used, first_config, first_backend, first_error_type, stream"


async def publish_fragile_with_fallback(client: Client, admin: dict[str, str]) -> None:
    await publish(client, admin, backend="steady", model=unique("ok"), config="spare", prompt=None)
    await publish(client, admin, backend="fragile", model=unique("status:500:all"), fallback={"name": "spare"})


async def open_fragiles_breaker(client: Client, admin: dict[str, str]) -> None:
    """Three failures of fragile open its breaker; spare answers each of those requests."""
    assert await complete(client, admin, 3) == [200] * 3


async def breaker_rules(client: Client, admin: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {
        "by-backend": await create_rule(client, admin, "by-backend", "breaker_open", **WINDOW),
        "on-fragile": await create_rule(
            client, admin, "on-fragile", "breaker_open", scope={"backend": "fragile"}, group_by=None, **WINDOW
        ),
        "on-steady": await create_rule(
            client, admin, "on-steady", "breaker_open", scope={"backend": "steady"}, group_by=None, **WINDOW
        ),
        "by-prompt": await create_rule(client, admin, "by-prompt", "breaker_open", group_by="prompt", **WINDOW),
        "overall": await create_rule(client, admin, "overall", "breaker_open", group_by=None, **WINDOW),
    }


async def check_breaker_rules(client: Client, admin: dict[str, str]) -> None:
    """Two requests refused by fragile's open breaker and answered by spare: two refusals of fragile."""
    rules = await breaker_rules(client, admin)
    assert rules["by-backend"]["group_by"] == "backend"
    await open_fragiles_breaker(client, admin)
    assert await complete(client, admin, 2) == [200, 200]

    transitions = await evaluate(client, FakeClock())

    names = {rule["id"]: name for name, rule in rules.items()}
    assert {names[rule_id]: found for rule_id, found in transitions.items()} == {
        "by-backend": [("fragile", "fire")],
        "on-fragile": [("", "fire")],
        "by-prompt": [("greet", "fire")],
        "overall": [("", "fire")],
    }
    incidents = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert {(i["rule"], i["subject"]): i["value"] for i in incidents} == {
        ("by-backend", "fragile"): 2.0,
        ("on-fragile", ""): 2.0,
        ("by-prompt", "greet"): 2.0,
        ("overall", ""): 2.0,
    }


async def test_breaker_rules_count_a_first_backends_refusals_behind_a_working_fallback(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish_fragile_with_fallback(client, admin)
    await check_breaker_rules(client, admin)


async def test_a_refusal_of_the_fallback_too_counts_for_each_attempt_refused(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """Prompt ``other`` runs on fragile and falls back to ``cfg`` on fragile too. The third failure opens the breaker:
    the second request's fallback is refused, and both attempts of the third. Rules count refused attempts, the one
    per prompt as the one per backend."""
    await publish(client, admin, backend="fragile", model=unique("status:500:all"), prompt=None)
    other = {"config": "other", "prompt": "other", "fallback": {"name": "cfg"}}
    await publish(client, admin, backend="fragile", model=unique("status:500:all"), **other)
    by_backend = await create_rule(client, admin, "by-backend", "breaker_open", **WINDOW)
    by_prompt = await create_rule(client, admin, "by-prompt", "breaker_open", group_by="prompt", **WINDOW)
    assert await complete(client, admin, 3, prompt="other") == [502, 503, 503]

    transitions = await evaluate(client, FakeClock())

    assert transitions == {by_backend["id"]: [("fragile", "fire")], by_prompt["id"]: [("other", "fire")]}
    incidents = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert {(i["rule"], i["subject"]): i["value"] for i in incidents} == {
        ("by-backend", "fragile"): 3.0,
        ("by-prompt", "other"): 3.0,
    }


async def request(client: Client, admin: dict[str, str], door: str, stream: bool) -> None:
    if door == "prompt":
        path, body = "/v1/prompts/greet/complete", {"variables": {"name": "Ada"}, "stream": stream}
    else:
        path = "/v1/chat/completions"
        body = {"model": "prompt:greet", "messages": [], "variables": {"name": "Ada"}, "stream": stream}
    response = await client.post(path, json=body, headers=admin)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("door", ["prompt", "openai"])
async def test_a_failed_over_record_names_the_backend_tried_first_and_its_failure(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine, door: str, stream: bool
) -> None:
    await publish_fragile_with_fallback(client, admin)
    await open_fragiles_breaker(client, admin)
    await request(client, admin, door, stream)
    await runtime_of(client.app).completions.recorder.flush()

    records = await rows(clean_database, f"SELECT {RECORD} FROM completions ORDER BY id")

    failed = ("steady", "ok", None, True, None, "fragile", "upstream_unavailable", False)
    refused = ("steady", "ok", None, True, None, "fragile", "circuit_open", stream)
    assert [tuple(r) for r in records] == [failed] * 3 + [refused]


async def test_a_record_of_an_answer_broken_off_names_its_first_config_and_backend(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """Fragile breaks its answer off after two tokens (the first backend spent tokens): spare answers again."""
    await publish(client, admin, backend="steady", model=unique("ok"), config="spare", prompt=None)
    await publish(client, admin, backend="fragile", model=unique("reset-after:2"), fallback={"name": "spare"})
    assert await complete(client, admin, 1) == [200]
    await runtime_of(client.app).completions.recorder.flush()
    [record] = await rows(clean_database, f"SELECT {RECORD} FROM completions")
    assert tuple(record) == ("steady", "ok", None, True, "cfg", "fragile", "upstream_unavailable", False)


async def test_a_record_that_did_not_fail_over_names_no_first_backend(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish(client, admin, backend="steady", model=unique("ok"))
    assert await complete(client, admin, 1) == [200]
    await runtime_of(client.app).completions.recorder.flush()
    [record] = await rows(clean_database, f"SELECT {RECORD} FROM completions")
    assert tuple(record) == ("steady", "ok", None, False, None, None, None, False)


async def test_error_rate_by_backend_counts_a_failover_under_the_backend_its_record_names(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """An evaluation run on ``chosen`` (fragile, falling back to ``spare``): no version of the prompt and no variant
    ran it, and ``other`` on steady falls back to ``spare`` too, so the configs cannot tell which backend failed;
    the record does (its first backend spent no tokens: it names no first config)."""
    await publish(client, admin, backend="steady", model=unique("ok"), config="spare", prompt=None)
    await publish(client, admin, backend="steady", model=unique("ok"))
    other = {"config": "other", "prompt": None, "fallback": {"name": "spare"}}
    await publish(client, admin, backend="steady", model=unique("ok"), **other)
    chosen = {"config": "chosen", "prompt": None, "fallback": {"name": "spare"}}
    await publish(client, admin, backend="fragile", model=unique("status:500:all"), **chosen)
    rule = await create_rule(client, admin, "by-backend", "error_rate", threshold=0.5, min_count=1, group_by="backend")
    await dataset(client, admin, "cases", [{"variables": {"name": "Ada"}, "expected": "x"}])
    run = await start_run(
        client, admin, prompt="greet", version=1, config={"name": "chosen", "version": 1}, dataset={"name": "cases"}
    )
    assert (await finished(client, admin, run["id"]))["status"] == "completed"

    assert await evaluate(client, FakeClock()) == {rule["id"]: [("fragile", "fire")]}
    [record] = await rows(clean_database, "SELECT first_config, first_backend, first_error_type FROM completions")
    assert tuple(record) == (None, "fragile", "upstream_unavailable")


async def test_error_rate_by_backend_still_works_out_the_first_backend_of_a_record_from_before(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """A record written before migration 0021 names no first backend: the prompt version's config tells it."""
    await publish_fragile_with_fallback(client, admin)
    rule = await create_rule(client, admin, "by-backend", "error_rate", threshold=0.5, min_count=1, group_by="backend")
    assert await complete(client, admin, 1) == [200]
    await runtime_of(client.app).completions.recorder.flush()
    async with clean_database.begin() as connection:
        await connection.execute(text("UPDATE completions SET first_backend = NULL, first_error_type = NULL"))

    assert await evaluate(client, FakeClock()) == {rule["id"]: [("fragile", "fire")]}


async def test_breaker_rules_count_a_first_backends_refusals_on_sqlite(
    sqlite_client: tuple[Client, dict[str, str]],
) -> None:
    client, admin = sqlite_client
    await publish_fragile_with_fallback(client, admin)
    await check_breaker_rules(client, admin)
