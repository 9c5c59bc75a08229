"""PostgreSQL stopped under load: cached prompts are served stale, writes fail fast, exposures and events wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.faults.processes import (
    Load,
    PrivatePostgres,
    RegistryProcess,
    admin_headers,
    make_prompt,
    metric_value,
    ok,
    promote_to_production,
    record_figures,
    registry_env,
    wait_until,
)

EXPOSURE_BUFFER = 40
EVENT_BUFFER = 50


@pytest.fixture(scope="module")
def registry(postgres: PrivatePostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    env = registry_env(
        postgres.url,
        None,
        cache_ttl_seconds="0.5",  # so renders during the outage need the database and fall back to the stale copy
        experiment_exposure_buffer_size=str(EXPOSURE_BUFFER),
        experiment_event_buffer_size=str(EVENT_BUFFER),
        experiment_exposure_flush_seconds="0.5",
        experiment_event_retry_seconds="0.5",
    )
    process = RegistryProcess(env, tmp_path_factory.mktemp("database-outage") / "registry.log")
    try:
        yield process
    finally:
        process.close()


def query(url: str, sql: str) -> Any:
    async def run() -> Any:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                return (await connection.execute(text(sql))).scalar_one()
        finally:
            await engine.dispose()

    return asyncio.run(run())


def events(prefix: str, count: int, *, metric: str = "converted") -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [
        {"unit": f"{prefix}-{n}", "metric": metric, "idempotency_key": f"{prefix}-{n}", "timestamp": now}
        for n in range(count)
    ]


def timed(send: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = send()
    return response, time.monotonic() - started


def test_renders_stay_up_writes_fail_fast_and_exposures_and_events_are_written_when_postgres_returns(
    registry: RegistryProcess, postgres: PrivatePostgres
) -> None:
    headers = admin_headers(postgres.url)
    with httpx.Client(base_url=registry.url, headers=headers, timeout=30) as http:
        make_prompt(http, "greet", versions=2)
        ok(http.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}))
        experiment = {
            "key": "tone",
            "prompt": "greet",
            "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
            "primary_metric": "converted",
        }
        ok(http.post("/v1/experiments", json=experiment))
        ok(http.post("/v1/experiments/tone/start"))
        wait_until(
            lambda: http.post("/v1/prompts/greet/render", json=_render("warm")).json().get("experiment") is not None,
            timeout=10,
            message="the experiment did not start routing",
        )
        ok(http.post("/v1/events", json={"events": events("before", 10)}))

        def render(client: httpx.Client, _: int) -> httpx.Response:
            return client.post("/v1/prompts/greet/render", json={"variables": {"x": "y"}})

        with Load(render, registry.url, headers, threads=3) as renders:
            time.sleep(1.0)
            outage_started = time.monotonic()
            postgres.stop()
            time.sleep(1.0)  # past the cache lifetime: renders now try the database

            created, create_seconds = timed(
                lambda: http.post("/v1/prompts/greet/versions", json={"kind": "text", "template": "v3 {{ x }}"})
            )
            promoted, promote_seconds = timed(lambda: promote_to_production(http, "greet", 2, expected_current=1))
            routed = [http.post("/v1/prompts/greet/render", json=_render(f"down-{n}")) for n in range(60)]
            held = [http.post("/v1/events", json={"events": events(f"down{n}", 10)}) for n in range(3)]
            with_unknown = events("down3", 9) + events("unknown", 1, metric="no-such-metric")
            held.append(http.post("/v1/events", json={"events": with_unknown}))
            held.append(http.post("/v1/events", json={"events": events("down0", 10)}))  # a client's retry
            refused = http.post("/v1/events", json={"events": events("refused", 10)})
            metrics_during = http.get("/metrics").text
            time.sleep(1.0)
            outage_ended = time.monotonic()
            postgres.start()
            recovered_after = wait_until(
                lambda: "x-registry-stale" not in render(http, 0).headers, timeout=20, message="renders stayed stale"
            )
            time.sleep(0.5)
        during = renders.between(outage_started, outage_ended)

        expected_events = 10 + 3 * 10 + 9
        events_written_after = recovered_after + wait_until(
            lambda: query(postgres.url, "SELECT count(*) FROM outcome_events") >= expected_events,
            timeout=20,
            message="buffered events were not written",
        )
        wait_until(
            lambda: query(postgres.url, "SELECT count(*) FROM exposures WHERE unit LIKE 'down-%'") > 0,
            timeout=20,
            message="buffered exposures were not written",
        )
        time.sleep(1.0)  # one more flush interval: everything held is written by now
        stored_events = query(postgres.url, "SELECT count(*) FROM outcome_events")
        distinct_keys = query(postgres.url, "SELECT count(DISTINCT idempotency_key) FROM outcome_events")
        refused_stored = query(
            postgres.url, "SELECT count(*) FROM outcome_events WHERE idempotency_key LIKE 'refused%'"
        )
        stored_exposures = query(postgres.url, "SELECT count(*) FROM exposures WHERE unit LIKE 'down-%'")
        metrics_after = http.get("/metrics").text

    errors = [r for r in renders.results if r.status != 200]
    figures = {
        "outage_seconds": round(outage_ended - outage_started, 1),
        "renders_during_outage": len(during),
        "stale_renders_during_outage": sum(1 for r in during if r.stale),
        "render_errors": len(errors),
        "create_version_503_seconds": round(create_seconds, 3),
        "promote_503_seconds": round(promote_seconds, 3),
        "events_buffered": int(metric_value(metrics_during, "registry_experiment_events_buffered_total")),
        "events_refused_when_full": int(metric_value(metrics_after, "registry_experiment_events_dropped_total")),
        "events_stored_after": stored_events,
        "exposures_sent_during_outage": len(routed),
        "exposures_stored_after": stored_exposures,
        "exposures_dropped_by_bound": int(metric_value(metrics_after, "registry_experiment_exposures_dropped_total")),
        "renders_fresh_after_restart_s": round(recovered_after, 2),
        "events_written_after_restart_s": round(events_written_after, 2),
    }
    record_figures("test_database_outage", figures)

    assert errors == [], errors[:5]
    assert len(during) > 20
    assert sum(1 for r in during if r.stale) > 10
    for response in (created, promoted):  # answered, not hung (their times are figures, not assertions)
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"] == "/problems/database_unavailable"
    assert all(r.status_code == 200 for r in routed)
    assert [r.status_code for r in held] == [202] * 5, [r.text for r in held]
    assert all(r.json()["buffered"] == 10 for r in held)
    assert refused.status_code == 503  # the buffer holds 50: this batch did not fit and the client keeps it
    assert refused.json()["type"] == "/problems/database_unavailable"
    # Every event answered 202 is stored once (the retried batch deduplicated by key); the unknown metric is
    # discarded when written; the refused batch is counted, not stored.
    assert stored_events == distinct_keys == expected_events
    assert refused_stored == 0
    assert metric_value(metrics_after, "registry_experiment_buffered_events_rejected_total") == 1
    assert metric_value(metrics_after, "registry_experiment_events_dropped_total") == 10
    # Exposures: at most the bound is held; whatever it could not hold is counted.
    dropped_exposures = metric_value(metrics_after, "registry_experiment_exposures_dropped_total")
    assert stored_exposures <= EXPOSURE_BUFFER
    assert stored_exposures + dropped_exposures == len(routed)


def _render(unit: str) -> dict[str, Any]:
    return {"variables": {"x": "y"}, "unit": unit}
