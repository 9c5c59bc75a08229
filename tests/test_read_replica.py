"""Analytics reads (results, exports, usage) go to the read replica when one is configured."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.settings import Settings
from tests.api import Headers
from tests.conftest import problem, serve_in_process
from tests.experiments.conftest import make_experiment, make_metric, make_prompt

UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:1/replica"


async def test_results_exports_and_usage_read_from_the_replica(
    settings: Settings, admin: Headers, clean_database: AsyncEngine
) -> None:
    app = create_app(settings.model_copy(update={"database_read_url": UNREACHABLE, "database_connect_timeout": 0.5}))
    async with serve_in_process(app) as client:
        await make_prompt(client, admin, "greeting")
        await make_metric(client, admin, "converted")
        await make_experiment(client, admin, "tone", "greeting")  # writes go to the primary
        for path in ("/v1/experiments/tone/results", "/v1/experiments/tone/export", "/v1/usage"):
            response = await client.get(path, headers=admin)
            assert response.status_code == 503, (path, response.text)
            assert problem(response)["type"] == "/problems/database_unavailable"
        assert (await client.get("/v1/experiments/tone", headers=admin)).status_code == 200  # not analytics


async def test_a_replica_url_serves_results(settings: Settings, admin: Headers, clean_database: AsyncEngine) -> None:
    app = create_app(settings.model_copy(update={"database_read_url": settings.database_url}))
    runtime = app.state.runtime
    assert runtime.read_engine is not runtime.engine
    async with serve_in_process(app) as client:
        await make_prompt(client, admin, "greeting")
        await make_metric(client, admin, "converted")
        await make_experiment(client, admin, "tone", "greeting")
        results = await client.get("/v1/experiments/tone/results", headers=admin)
    assert results.status_code == 200
    assert results.json()["experiment"] == "tone"
