"""The alert evaluation is the worker's: a worker (or a single ``all`` process) schedules it, an API replica not."""

from __future__ import annotations

import pytest

from registry.lib.jobs import Role
from registry.runtime import Runtime
from registry.settings import Settings


@pytest.mark.parametrize(("role", "scheduled"), [("all", True), ("api", False), ("worker", True)])
async def test_the_alert_evaluation_runs_in_the_worker(settings: Settings, role: Role, scheduled: bool) -> None:
    runtime = Runtime.build(settings.model_copy(update={"role": role, "alert_evaluate_seconds": 7.0}))
    await runtime.engine.dispose()
    await runtime.http.close()
    if runtime.redis is not None:
        await runtime.redis.aclose()
    jobs = {job.name: job for job in runtime.jobs}
    assert ("alert-evaluate" in jobs) is scheduled
    if scheduled:
        assert jobs["alert-evaluate"].interval == 7.0
        assert not jobs["alert-evaluate"].run_at_shutdown
