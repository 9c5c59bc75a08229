"""An evaluator that stalls past its lease while another takes the rule over: the stalled one changes nothing.

Two evaluators share a fake clock, so a lease runs out when the test moves the clock, never while the test
waits. The first takes the rule's lease at the clock's start and stops before its evaluation's transaction
(an ``asyncio.Event``); completions then fail, so the second, of another name or of the first's own (a
restarted process keeping its hostname), is refused while that lease is live, takes the rule over once it has
run out and fires. Then the first goes on: at its own (earlier) time the window holds no completion, so an
evaluation of its would resolve the incident the second just opened and notify receivers of it. On
PostgreSQL and on SQLite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.alerts.evaluation import Transition
from registry.alerts.evaluator import AlertEvaluator
from registry.settings import Settings
from tests.alerts.conftest import FakeClock, alert_audit, alert_events, complete, create_rule, ok, rows
from tests.completions.conftest import backend, publish, unique
from tests.conftest import count_rows
from tests.embedded import serve_on_engine_kind
from tests.experiments.conftest import Client, runtime_of

INTERVAL = 1000.0  # the evaluators' lease is three intervals: it runs out only when the test moves the clock
LEASE_SECONDS = 3 * INTERVAL
WINDOW_SECONDS = 3600  # the second's window, after the lease ran out, still holds the completions made meanwhile


class PausingEvaluator(AlertEvaluator):
    """An evaluator that, once it holds the lease, stops before its first evaluation's transaction until ``go_on``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused = asyncio.Event()
        self.go_on = asyncio.Event()

    async def _act(self, rule_id: int, lease: str, now: Any) -> list[tuple[str, Transition]]:
        if not self.paused.is_set():
            self.paused.set()
            await self.go_on.wait()
        return await super()._act(rule_id, lease, now)


@pytest.fixture
async def served(
    migrated_engine: AsyncEngine, settings: Settings, tmp_path: Path, fault: str
) -> AsyncIterator[tuple[Client, dict[str, str]]]:
    """The registry on the test's database; its own evaluator evaluates too rarely to take part."""
    fields: dict[str, Any] = {
        "backends": {"steady": backend(fault, max_retries=0, breaker_failures=1000)},
        "completion_usage_flush_seconds": 3600.0,
        "alert_evaluate_seconds": 3600.0,
    }
    async with serve_on_engine_kind(migrated_engine, settings, tmp_path, **fields) as client_and_admin:
        yield client_and_admin


@pytest.mark.parametrize("second_owner", ["second", "first"], ids=["another-evaluator", "the-same-evaluator-restarted"])
async def test_a_stalled_evaluator_that_was_taken_over_fires_resolves_and_notifies_nothing(
    served: tuple[Client, dict[str, str]], migrated_engine: AsyncEngine, second_owner: str
) -> None:
    client, admin = served
    await publish(client, admin, backend="steady", model=unique("status:500:all"))
    rule = await create_rule(client, admin, "errors", "error_rate", threshold=0.05, window_seconds=WINDOW_SECONDS)
    runtime = runtime_of(client.app)
    clock = FakeClock()
    parts = (runtime.sessionmaker, runtime.bus, ["steady"])
    first = PausingEvaluator(*parts, interval=INTERVAL, clock=clock, owner="first")
    second = AlertEvaluator(*parts, interval=INTERVAL, clock=clock, owner=second_owner)

    stalled = asyncio.create_task(first.evaluate(rule["id"]))
    await first.paused.wait()
    assert await complete(client, admin, 10) == [502] * 10  # after the first's time: outside its window
    await runtime.completions.recorder.flush()
    assert await second.evaluate(rule["id"]) is None  # the first's lease is live, whatever the second's name
    clock.advance(LEASE_SECONDS + 1)  # the first stalled past its lease
    assert await second.evaluate(rule["id"]) == [("", "fire")]
    first.go_on.set()
    refused = await stalled

    # One firing, not resolved: one incident, one webhook event, one audit entry.
    assert await alert_events(migrated_engine) == [("alert.firing", "errors")]
    assert await alert_audit(migrated_engine) == [("alert.firing", "errors")]
    [incident] = (await ok(await client.get("/v1/alerts/incidents", headers=admin)))["items"]
    assert (incident["status"], incident["value"], incident["resolved_at"]) == ("firing", 1.0, None)
    assert await count_rows(migrated_engine, "alert_incidents") == 1
    assert refused is None
    assert rule["id"] not in first.leases
    [(owner, evaluated_at)] = await rows(migrated_engine, "SELECT lease_owner, last_evaluated_at FROM alert_rules")
    assert owner == second.leases[rule["id"]]
    assert owner.startswith(f"{second_owner}/")
    assert evaluated_at is not None

    # The second holds the lease and goes on; the first (of its name or not) cannot take it while it is live.
    assert await first.evaluate(rule["id"]) is None
    clock.advance(60)
    assert await second.evaluate(rule["id"]) == []  # still failing: no second firing
    assert await alert_events(migrated_engine) == [("alert.firing", "errors")]
