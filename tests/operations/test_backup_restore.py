"""Backup and restore end to end: a PostgreSQL database filled through the API, archived, restored into SQLite
and into a fresh PostgreSQL database; the restored ones answer the API's GET routes as the original does."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar

from registry.app import create_app
from registry.db import migrate
from registry.db.engine import create_engine
from registry.operations.backup import backup, restore
from registry.operations.repository import TableRepository
from registry.settings import Settings
from tests.conftest import AppClient, create_database, drop_database, serve_in_process
from tests.evals.conftest import answers, dataset
from tests.experiments.conftest import flush_and_aggregate, make_experiment, make_metric, make_prompt

Headers = dict[str, str]

ROUTES = [
    "/v1/prompts",
    "/v1/prompts/greet",
    "/v1/prompts/greet/versions",
    "/v1/prompts/greet/versions/2",
    "/v1/configs",
    "/v1/configs/small/versions",
    "/v1/metrics",
    "/v1/experiments",
    "/v1/experiments/greet-test",
    "/v1/experiments/greet-test/results",
    "/v1/units/user-3",
    "/v1/webhooks",
    "/v1/evals/datasets",
    "/v1/evals/datasets/greet-cases/versions/1/items",
    "/v1/prompts/greet/gates/production",
    "/v1/audit",
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Exposures and statistics written when the test asks, so the archive holds them all."""
    return settings.model_copy(
        update={"experiment_exposure_flush_seconds": 3600.0, "experiment_statistics_seconds": 3600.0}
    )


async def ok(response: Any) -> Any:
    assert response.status_code < 300, response.text
    return response.json()


async def fill(client: AppClient, admin: Headers) -> None:
    """Prompts with versions and history, a config, an experiment with exposures and events, a webhook, a dataset."""
    await make_prompt(client, admin, "greet", versions=3)
    await ok(
        await client.post(
            "/v1/prompts/greet/versions/3/promote",
            json={"to": "production", "expected_current": 1, "reason": "better"},
            headers=admin,
        )
    )
    await ok(await client.post("/v1/configs", json={"name": "small"}, headers=admin))
    version = {"backend": "local", "model": "tiny", "params": {"temperature": 0.2}}
    await ok(await client.post("/v1/configs/small/versions", json=version, headers=admin))
    await make_metric(client, admin, "converted")
    await make_experiment(
        client,
        admin,
        "greet-test",
        "greet",
        variants=[{"key": "control", "prompt_version": 3}, {"key": "treatment", "prompt_version": 2}],
    )
    for i in range(12):
        await ok(
            await client.post(
                "/v1/prompts/greet/render", json={"variables": {"x": "hi"}, "unit": f"user-{i}"}, headers=admin
            )
        )
    now = datetime.now(UTC).isoformat()
    events = [
        {"unit": f"user-{i}", "metric": "converted", "idempotency_key": f"c-{i}", "timestamp": now}
        for i in range(0, 12, 3)
    ]
    assert (await ok(await client.post("/v1/events", json={"events": events}, headers=admin)))["accepted"] == 4
    await flush_and_aggregate(client)
    await ok(await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]}, headers=admin))
    await dataset(client, admin, "greet-cases", answers(("a", "a"), ("b", "c")))
    await ok(
        await client.put(
            "/v1/prompts/greet/gates/production",
            json={"dataset": {"name": "greet-cases"}, "min_pass_rate": 0.5},
            headers=admin,
        )
    )


async def answers_of(client: AppClient, headers: Headers) -> dict[str, Any]:
    found = {}
    for route in ROUTES:
        response = await client.get(route, headers=headers)
        body = response.json()
        body.pop("computed_at", None)  # when the results were computed: at each request
        found[route] = (response.status_code, body)
    return found


@asynccontextmanager
async def restored_app(settings: Settings, archive: Path) -> AsyncIterator[Litestar]:
    engine = create_engine(settings)
    try:
        await migrate.upgrade(engine)
        await restore(engine, archive)
    finally:
        await engine.dispose()
    yield create_app(settings)


async def test_a_restored_database_answers_as_the_original(
    client: AppClient, admin: Headers, settings: Settings, tmp_path: Path
) -> None:
    await fill(client, admin)
    expected = await answers_of(client, admin)
    assert {route: status for route, (status, _) in expected.items() if status != 200} == {}
    assert expected["/v1/experiments/greet-test/results"][1]["units"] == 12
    archive = tmp_path / "registry.tar.gz"
    engine = create_engine(settings)
    try:
        summary = await backup(engine, archive, include=frozenset({"exposures", "events", "usage"}))
    finally:
        await engine.dispose()
    assert summary.rows["exposures"] == 12
    assert summary.rows["outcome_events"] == 4

    # Without Redis: the restored apps must not read the original's cached state.
    sqlite = settings.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'restored.db'}", "redis_url": None}
    )
    async with restored_app(sqlite, archive) as app, serve_in_process(app) as restored:
        assert await answers_of(restored, admin) == expected

    name = f"registry_restore_{uuid.uuid4().hex[:10]}"
    postgres = settings.model_copy(update={"database_url": await create_database(name), "redis_url": None})
    try:
        async with restored_app(postgres, archive) as app, serve_in_process(app) as restored:
            assert await answers_of(restored, admin) == expected
            # The id sequences moved past the restored rows: new rows insert.
            await ok(await restored.post("/v1/prompts", json={"name": "after-restore"}, headers=admin))
            await ok(
                await restored.post(
                    "/v1/prompts/greet/versions", json={"kind": "text", "template": "v4 {{ x }}"}, headers=admin
                )
            )
    finally:
        await drop_database(name)


async def test_a_backup_is_one_snapshot_while_writes_go_on(
    client: AppClient, admin: Headers, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt committed while the backup reads its first table is in the database but not in the archive."""
    await ok(await client.post("/v1/prompts", json={"name": "before"}, headers=admin))
    original_rows = TableRepository.rows
    written: list[str] = []

    async def rows_while_writing(self: TableRepository, table: Any, *, batch: int = 1000) -> AsyncIterator[Any]:
        if not written:
            written.append("during")
            await ok(await client.post("/v1/prompts", json={"name": "during"}, headers=admin))
        async for row in original_rows(self, table, batch=batch):
            yield row

    monkeypatch.setattr(TableRepository, "rows", rows_while_writing)
    engine = create_engine(settings)
    try:
        summary = await backup(engine, tmp_path / "b.tar.gz", include=frozenset())
    finally:
        await engine.dispose()
    assert written == ["during"]
    assert summary.rows["prompts"] == 1
    listed = (await ok(await client.get("/v1/prompts", headers=admin)))["items"]
    assert sorted(p["name"] for p in listed) == ["before", "during"]
