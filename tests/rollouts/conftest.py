"""Helpers for rollout tests: a prompt with two versions, metrics, rollouts, and the checker on demand."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from registry.rollouts.plan import Action
from registry.settings import Settings
from tests.experiments.conftest import Client, flush_and_aggregate, in_app, runtime_of, settle
from tests.experiments.conftest import fault as fault  # the stand-in backend, for the simulations
from tests.experiments.test_completion_metrics import fold_in as fold_in  # exposures, then completions
from tests.rollouts.simulation import FakeClock, ok

STEPS = [{"share": 0.05}, {"share": 0.25}, {"share": 0.5}, {"share": 1.0}]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Background flushes, aggregation and checks only when a test asks, so tests are exact."""
    return settings.model_copy(
        update={
            "experiment_exposure_flush_seconds": 3600.0,
            "experiment_statistics_seconds": 3600.0,
            "rollout_check_seconds": 3600.0,
        }
    )


async def start_rollout(client: Client, headers: dict[str, str], prompt: str = "greet", **extra: Any) -> dict[str, Any]:
    body = {"candidate_version": 2, "steps": STEPS, "guardrails": [{"metric": "converted"}], **extra}
    rollout = await ok(await client.post(f"/v1/prompts/{prompt}/rollouts", json=body, headers=headers), 201)
    await settle(client)
    return rollout


async def data_in_arms(
    client: Client, headers: dict[str, str], arms: tuple[str, ...] = ("production", "candidate"), prompt: str = "greet"
) -> None:
    """New units rendered until the current step has one in each of ``arms``, folded into the statistics: the
    evidence a step needs to move on (a zero-filled guardrail, as ``converted`` is, counts every exposed unit).
    At full share production has no traffic: pass ``("candidate",)``."""
    seen: set[str] = set()
    for _ in range(5000):
        body = {"variables": {"x": "hi"}, "unit": f"unit-{uuid.uuid4().hex}"}
        rendered = await ok(await client.post(f"/v1/prompts/{prompt}/render", json=body, headers=headers))
        seen.add(rendered["experiment"]["variant"])
        if seen >= set(arms):
            break
    assert seen >= set(arms)
    await flush_and_aggregate(client)


async def check(client: Client, rollout_id: int, clock: FakeClock) -> Action | None:
    """One check of the rollout, as the worker makes it, at the fake clock's time."""
    checker = runtime_of(client.app).rollouts
    checker.clock = clock
    action = await in_app(client, lambda: checker.check(rollout_id))
    await settle(client)
    return action
