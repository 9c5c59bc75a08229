"""Outcome events: validated one by one, deduplicated by idempotency key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from tests.conftest import KeyFactory, count_rows, problem
from tests.experiments.conftest import Client, make_experiment, make_metric


def event(key: str, unit: str = "user-1", metric: str = "converted", **extra: Any) -> dict[str, Any]:
    return {"unit": unit, "metric": metric, "idempotency_key": key, "timestamp": datetime.now(UTC).isoformat(), **extra}


async def test_good_events_are_kept_and_bad_ones_get_their_own_errors(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    now = datetime.now(UTC)
    batch = [
        event("ok-1"),
        event("bad-metric", metric="nope"),
        event("future", timestamp=(now + timedelta(hours=1)).isoformat()),
        event("naive", timestamp="2026-01-01T00:00:00"),
        event("binomial-2", value=2),
        {"unit": 5, "metric": "converted", "idempotency_key": "typed", "timestamp": now.isoformat()},
        event("ok-2", unit="user-2", value=0),
        event("ok-1"),
        event("unknown-experiment", experiment="nope"),
        "not an object",
    ]
    response = await client.post("/v1/events", json={"events": batch}, headers=setup)
    assert response.status_code == 207, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 7)
    items = body["items"]
    assert [i["status"] for i in items] == [
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "accepted",
        "duplicate",
        "rejected",
        "rejected",
    ]
    fields = {i["index"]: [e["field"] for e in i["errors"]] for i in items if i["status"] == "rejected"}
    assert fields == {
        1: ["metric"],
        2: ["timestamp"],
        3: ["timestamp"],
        4: ["value"],
        5: ["unit"],
        8: ["experiment"],
        9: ["event"],
    }
    assert await count_rows(clean_database, "outcome_events") == 2


async def test_an_idempotency_key_is_recorded_once(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    first = await client.post("/v1/events", json={"events": [event("k-1"), event("k-2")]}, headers=setup)
    assert first.status_code == 200
    again = await client.post("/v1/events", json={"events": [event("k-1"), event("k-3")]}, headers=setup)
    assert again.status_code == 200
    assert [i["status"] for i in again.json()["items"]] == ["duplicate", "accepted"]
    assert await count_rows(clean_database, "outcome_events") == 3


async def test_stored_events_keep_every_value_exactly(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    """Text, numbers and times arrive in the database as sent (events are written as one document)."""
    await make_metric(client, setup, "revenue", kind="continuous")
    await make_experiment(client, setup, "greet-test", "greet")
    sent = [
        event('quote " back \\ zoë 😀', unit="ünït \t 😀", metric="revenue", value=0.1 + 0.2,
              timestamp="2026-11-20T10:11:12.345678+05:30"),
        event("tiny", metric="revenue", value=-1e-300, timestamp="2026-11-20T23:59:59Z"),
        event("huge", metric="revenue", value=999_999_999_999_999.9, experiment="greet-test"),
        event("a\u0000b"),
    ]  # fmt: skip
    response = await client.post("/v1/events", json={"events": sent}, headers=setup)
    assert [i["status"] for i in response.json()["items"]] == ["accepted", "accepted", "accepted", "rejected"]
    assert response.json()["items"][3]["errors"][0]["field"] == "idempotency_key"
    async with clean_database.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT e.idempotency_key, e.unit, m.key, e.value, e.occurred_at, x.key FROM outcome_events e "
                    "JOIN metrics m ON m.id = e.metric_id LEFT JOIN experiments x ON x.id = e.experiment_id "
                    "ORDER BY e.value"
                )
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("tiny", "user-1", "revenue", -1e-300, datetime(2026, 11, 20, 23, 59, 59, tzinfo=UTC), None),
        (
            'quote " back \\ zoë 😀',
            "ünït \t 😀",
            "revenue",
            0.1 + 0.2,
            datetime(2026, 11, 20, 4, 41, 12, 345678, tzinfo=UTC),
            None,
        ),
        (
            "huge",
            "user-1",
            "revenue",
            999_999_999_999_999.9,
            datetime.fromisoformat(sent[2]["timestamp"]),
            "greet-test",
        ),
    ]


async def test_events_may_name_their_experiment(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    response = await client.post("/v1/events", json={"events": [event("e", experiment="greet-test")]}, headers=setup)
    assert response.json()["accepted"] == 1


async def test_a_batch_over_the_limit_is_refused_whole(
    client: Client, setup: dict[str, str], clean_database: AsyncEngine
) -> None:
    response = await client.post("/v1/events", json={"events": [event(f"k{i}") for i in range(1001)]}, headers=setup)
    assert response.status_code == 422
    assert problem(response)["errors"][0]["field"] == "events"
    empty = await client.post("/v1/events", json={"events": []}, headers=setup)
    assert empty.status_code == 422
    assert await count_rows(clean_database, "outcome_events") == 0


async def test_apps_post_events_with_a_read_key(client: Client, setup: dict[str, str], make_key: KeyFactory) -> None:
    reader = await make_key(Scope.READ, name="app")
    response = await client.post("/v1/events", json={"events": [event("k")]}, headers=reader)
    assert response.status_code == 200
    anonymous = await client.post("/v1/events", json={"events": [event("k2")]})
    assert anonymous.status_code == 401


async def test_exposures_reported_by_apps_must_name_a_running_variant(client: Client, setup: dict[str, str]) -> None:
    await make_experiment(client, setup, "greet-test", "greet")
    good = {"experiment": "greet-test", "unit": "u1", "variant": "treatment"}
    response = await client.post("/v1/exposures", json={"exposures": [good]}, headers=setup)
    assert response.status_code == 202
    assert response.json() == {"recorded": 1}
    bad = [good, {**good, "variant": "nope"}, {**good, "experiment": "missing"}]
    response = await client.post("/v1/exposures", json={"exposures": bad}, headers=setup)
    assert response.status_code == 422
    assert [e["field"] for e in problem(response)["errors"]] == ["exposures[1].variant", "exposures[2].experiment"]
