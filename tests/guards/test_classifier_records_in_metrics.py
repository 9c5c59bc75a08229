"""A model guard's classifier completions carry the guarded unit (so they are its data) but are not its completions
in experiment metrics: an arm with a model guard counts its guarded completions once, with their own latencies,
while usage reports still count (and charge) the classifier's; a backup keeps which completions were such checks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from registry.app import create_app
from registry.completions.observations import CompletionSource
from registry.db import migrate
from registry.experiments.sources import MetricSource
from registry.operations.backup import backup, restore
from registry.settings import Settings
from tests.completions.conftest import backend, serve_in_thread, unique
from tests.completions.fault_server import FaultServer, say
from tests.guards.conftest import config_version, ok, prompt_on
from tests.guards.test_classifier_unit_data import CLEAN, COMPLETE, MODERATION
from tests.guards.test_guards_experiments import routed

UNITS = [f"user-{i}" for i in range(16)]  # assigned by hash: forced units are left out of results
REQUESTS = 2  # per unit
PRICED = {"input_price_per_mtok": 1000.0, "output_price_per_mtok": 2000.0}
METRICS = {"completions": "completions", "latency": "latency_ms", "errors": "error"}  # key: completion field


@pytest.fixture
def served(settings: Settings, clean_database: AsyncEngine, fault: FaultServer) -> Iterator[str]:
    backends = {"fault": backend(fault.url)}  # type: ignore[attr-defined]
    update = {"backends": backends, "completion_usage_flush_seconds": 3600.0}  # written by GET /v1/usage, at once
    with serve_in_thread(create_app(settings.model_copy(update=update))) as base:
        yield base


async def folded(client: httpx.AsyncClient, headers: dict[str, str], units: dict[str, int]) -> dict[str, Any]:
    """The experiment's results by metric and variant, once the server's aggregator has folded the completions in.

    Every unit's completions were written in one transaction, which queued them all for one fold: once the
    control's units show their completions, the treatment's show all of theirs.
    """
    results: dict[str, Any] = {}
    for _ in range(500):
        body = await ok(await client.get("/v1/experiments/moderated/results", headers=headers))
        results = {m["metric"]: {v["variant"]: v for v in m["variants"]} for m in body["metrics"]}
        control = results["completions"]["c"]
        if (control["units"], control["mean"]) == (units["c"], REQUESTS):
            return results
        await asyncio.sleep(0.02)
    raise AssertionError(f"the completions were never folded into the experiment: {results}")


async def test_an_arm_with_a_model_guard_counts_its_guarded_completions_only_and_usage_the_classifiers_too(
    served: str, admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        judge = {"backend": "fault", "model": unique(say(CLEAN)), "params": {"max_tokens": 200}, **PRICED}
        await prompt_on(
            client, admin, "moderator", "judge", await config_version(client, admin, "judge", judge), "{{ text }}"
        )
        plain = await config_version(client, admin, "plain", {"backend": "fault", "model": unique("ok")})
        checked = {"backend": "fault", "model": unique("ok"), "guards": [MODERATION]}
        await config_version(client, admin, "checked", checked)
        await prompt_on(client, admin, "ask", "plain", plain, "Answer {{ question }}")
        for key, field in METRICS.items():
            body = {"key": key, "kind": "continuous", "source": "completions", "source_field": field}
            await ok(await client.post("/v1/metrics", json={**body, "aggregation": "sum"}, headers=admin))
        experiment = {
            "key": "moderated",
            "prompt": "ask",
            "variants": [
                {"key": "c", "prompt_version": 1},
                {"key": "t", "prompt_version": 1, "config": {"name": "checked", "version": 1}},
            ],
            "primary_metric": "completions",
            "guardrail_metrics": ["latency", "errors"],
        }
        await ok(await client.post("/v1/experiments", json=experiment, headers=admin))
        await ok(await client.post("/v1/experiments/moderated/start", headers=admin))
        await routed(client, admin, UNITS[0])
        for unit in UNITS:
            for _ in range(REQUESTS):  # each question its own, so no classifier answer comes from a cache
                asked = {"variables": {"question": uuid.uuid4().hex}, "unit": unit}
                await ok(await client.post(COMPLETE, json=asked, headers=admin))
        usage = await ok(await client.get("/v1/usage", params={"group_by": "prompt"}, headers=admin))  # writes them
        async with admin_engine.connect() as connection:
            query = text("SELECT prompt, unit, variant, guard_check, latency_ms, cost FROM completions ORDER BY id")
            rows = [tuple(row) for row in (await connection.execute(query)).all()]
        arm = {row[1]: row[2] for row in rows if row[0] == "ask"}
        units = {variant: sum(v == variant for v in arm.values()) for variant in ("c", "t")}
        results = await folded(client, admin, units)

    assert units["c"] > 1
    assert units["t"] > 1
    classifier = [row for row in rows if row[0] == "moderator"]
    treated = [row for row in rows if row[0] == "ask" and row[2] == "t"]
    assert len(classifier) == len(treated) == REQUESTS * units["t"]
    assert {row[1] for row in classifier} == {row[1] for row in treated}  # the guarded units' data
    assert all(row[2:4] == (None, True) for row in classifier)  # no arm's, and marked as a check
    assert not any(row[3] for row in rows if row[0] == "ask")

    # The experiment's figures: per unit, its own completions and their latencies, not its classifier's.
    for variant in ("c", "t"):
        assert results["completions"][variant]["units"] == units[variant]
        assert results["completions"][variant]["mean"] == REQUESTS
        assert results["errors"][variant]["mean"] == 0
    assert results["latency"]["t"]["mean"] == pytest.approx(sum(row[4] for row in treated) / units["t"])

    # What the aggregator reads of a treated unit: its two guarded completions.
    unit = treated[0][1]
    ids = dict(zip(METRICS, range(1, len(METRICS) + 1), strict=True))
    sources = [MetricSource(ids[key], "completions", field) for key, field in METRICS.items()]
    async with AsyncSession(admin_engine) as session:
        observed = (await CompletionSource().observations(session, [unit], sources))[unit]
    latencies = sorted(o.value for o in observed if o.metric_id == ids["latency"])
    assert latencies == pytest.approx(sorted(row[4] for row in treated if row[1] == unit))
    assert [o.value for o in observed if o.metric_id == ids["completions"]] == [1.0] * REQUESTS

    # Usage and spend still count the classifier's completions: the key pays for them.
    spent = {item["prompt"]: item for item in usage["items"]}
    assert spent["moderator"]["requests"] == len(classifier)
    assert spent["moderator"]["cost"] == pytest.approx(sum(row[5] for row in classifier))
    assert spent["moderator"]["cost"] > 0


async def test_a_backup_keeps_which_completions_were_a_guards_check(
    clean_database: AsyncEngine, tmp_path: Path
) -> None:
    insert = text(
        "INSERT INTO completions (created_at, prompt, unit, status, input_tokens, output_tokens, cost, stream, "
        "fallback_used, cached, guard_flagged, guard_check) VALUES (CURRENT_TIMESTAMP, :prompt, 'ada', 'ok', 1, 1, "
        "0.5, false, false, false, false, :check)"
    )
    async with clean_database.begin() as connection:
        await connection.execute(insert, [{"prompt": "ask", "check": False}, {"prompt": "moderator", "check": True}])
    archive = tmp_path / "registry.tar.gz"
    assert (await backup(clean_database, archive, include=frozenset({"usage"}))).rows["completions"] == 2

    restored = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'restored.db'}", poolclass=NullPool)
    try:
        await migrate.upgrade(restored)
        await restore(restored, archive)
        async with restored.connect() as connection:
            query = text("SELECT prompt, guard_check FROM completions ORDER BY id")
            rows = [tuple(row) for row in (await connection.execute(query)).all()]
    finally:
        await restored.dispose()
    assert rows == [("ask", False), ("moderator", True)]
