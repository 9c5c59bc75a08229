"""A unit's data: shown in full, and erased everywhere (statistics included), with an audit entry."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from registry.experiments.privacy import unit_digest
from tests.conftest import count_rows
from tests.experiments.conftest import Client, flush_and_aggregate, make_experiment


async def expose_and_convert(client: Client, headers: dict[str, str], units: list[str]) -> None:
    for unit in units:
        await client.post("/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": unit}, headers=headers)
    now = datetime.now(UTC).isoformat()
    events = [{"unit": u, "metric": "converted", "idempotency_key": f"c-{u}", "timestamp": now} for u in units]
    response = await client.post("/v1/events", json={"events": events}, headers=headers)
    assert response.status_code == 200
    await flush_and_aggregate(client)


async def test_unit_data_lists_exposures_events_and_derived_values(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    await expose_and_convert(client, setup, ["alice", "bob"])
    response = await client.get("/v1/units/alice", headers=setup)
    assert response.status_code == 200
    data = response.json()
    assert data["unit"] == "alice"
    assert [(e["experiment"], e["phase"]) for e in data["exposures"]] == [("greet-test", 1)]
    assert [(e["metric"], e["idempotency_key"]) for e in data["events"]] == [("converted", "c-alice")]
    assert data["experiments"][0]["metrics"] == [{"metric": "converted", "value": 1.0, "pre_exposure_value": 0.0}]
    assert (await client.get("/v1/units/nobody", headers=setup)).status_code == 404


async def test_erasing_a_unit_removes_its_data_and_its_share_of_the_statistics(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    units = [f"user-{i}" for i in range(20)]
    await expose_and_convert(client, setup, units)
    before = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    variant = (await client.get("/v1/units/user-3", headers=setup)).json()["exposures"][0]["variant"]

    response = await client.delete("/v1/units/user-3", headers=setup)
    assert response.status_code == 200
    assert response.json() == {
        "unit": "user-3",
        "exposures": 1,
        "events": 1,
        "derived_rows": 2,
        "cached_answers": 0,
        "completions": 0,
        "completion_texts": 0,
        "cached_completions": 0,
        "forced_variants": 0,
    }
    assert (await client.get("/v1/units/user-3", headers=setup)).status_code == 404

    after = (await client.get("/v1/experiments/greet-test/results", headers=setup)).json()
    assert after["units"] == before["units"] - 1
    units_before = {v["variant"]: v["units"] for v in before["variants"]}
    units_after = {v["variant"]: v["units"] for v in after["variants"]}
    assert units_after[variant] == units_before[variant] - 1
    converted_before = {r["variant"]: r["mean"] * r["units"] for r in before["metrics"][0]["variants"]}
    converted_after = {r["variant"]: r["mean"] * r["units"] for r in after["metrics"][0]["variants"]}
    assert round(converted_after[variant]) == round(converted_before[variant]) - 1

    audit = (await client.get("/v1/audit", params={"resource_type": "unit"}, headers=setup)).json()["items"]
    assert [(a["action"], a["resource_name"]) for a in audit] == [("unit.erase", unit_digest("user-3"))]
    assert "user-3" not in str(audit)
    assert await count_rows(clean_database, "exposures") == len(units) - 1


async def test_erasing_is_idempotent(client: Client, setup: dict[str, str]) -> None:
    response = await client.delete("/v1/units/never-seen", headers=setup)
    assert response.status_code == 200
    assert response.json() == {
        "unit": "never-seen",
        "exposures": 0,
        "events": 0,
        "derived_rows": 0,
        "cached_answers": 0,
        "completions": 0,
        "completion_texts": 0,
        "cached_completions": 0,
        "forced_variants": 0,
    }


async def test_an_erased_units_buffered_exposure_is_never_written(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    await client.post("/v1/prompts/greet/render", json={"variables": {"x": "a"}, "unit": "carol"}, headers=setup)
    assert (await client.get("/v1/units/carol", headers=setup)).json()["pending_exposures"] == 1
    await client.delete("/v1/units/carol", headers=setup)
    await flush_and_aggregate(client)
    assert await count_rows(clean_database, "exposures") == 0
