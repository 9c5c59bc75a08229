"""Evaluation runs belong to the worker role (and to the single process of role all), never to API processes."""

from __future__ import annotations

import pytest

from registry.lib.jobs import Role
from registry.runtime import Runtime
from registry.settings import Settings


@pytest.mark.parametrize(("role", "runs"), [("all", True), ("api", False), ("worker", True)])
async def test_only_worker_and_all_processes_take_evaluation_runs(settings: Settings, role: Role, runs: bool) -> None:
    runtime = Runtime.build(settings.model_copy(update={"role": role}))
    await runtime.engine.dispose()
    await runtime.http.close()
    if runtime.redis is not None:
        await runtime.redis.aclose()
    assert ("eval-runs" in {job.name for job in runtime.jobs}) is runs
