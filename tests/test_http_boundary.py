"""What every request sees: problem+json errors, limits, request ids, health, readiness, metrics."""

from __future__ import annotations

import re

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.db.engine import create_engine, create_sessionmaker
from registry.settings import Settings
from tests.api import Client, Headers, create_prompt
from tests.conftest import count_rows, problem, serve_in_process


async def test_health_needs_no_key(client: Client) -> None:
    response = await client.get("/health")
    assert response.json() == {"status": "ok"}


async def test_ready_checks_database_and_redis(client: Client) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "redis": "ok", "experiments_unloadable": []}


async def test_ready_is_503_when_the_database_is_unreachable(settings: Settings, clean_database: AsyncEngine) -> None:
    broken = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none", "database_connect_timeout": 0.5}
    )
    async with serve_in_process(create_app(broken)) as http:
        response = await http.get("/ready")
    assert response.status_code == 503
    assert response.json()["database"].startswith("unavailable")


async def test_writes_fail_fast_with_503_when_the_database_is_unreachable(
    settings: Settings, admin: Headers, clean_database: AsyncEngine
) -> None:
    app = create_app(settings)
    unreachable = settings.model_copy(
        update={"database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none", "database_connect_timeout": 0.5}
    )
    engine = create_engine(unreachable)
    connects: list[object] = []
    event.listen(engine.sync_engine, "do_connect", lambda *args: connects.append(args))
    async with serve_in_process(app) as http:
        app.state.runtime.sessionmaker = create_sessionmaker(engine)  # request transactions now hit a dead server
        response = await http.post("/v1/prompts", json={"name": "during-outage"}, headers=admin)
    await engine.dispose()
    assert response.status_code == 503
    assert problem(response)["type"] == "/problems/database_unavailable"
    assert response.headers["retry-after"] == "1"
    assert len(connects) == 1, "fails on the first refused connection, without retrying inside the request"
    assert await count_rows(clean_database, "prompts") == 0


async def test_request_ids_are_echoed_or_generated(client: Client) -> None:
    given = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    generated = await client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert generated.headers["x-request-id"] != "bad id with spaces"
    again = await client.get("/health")
    assert len(generated.headers["x-request-id"]) == 24
    assert again.headers["x-request-id"] != generated.headers["x-request-id"]


async def test_unknown_routes_and_methods_are_problems(client: Client, admin: Headers) -> None:
    missing = await client.get("/nothing-here")
    assert missing.status_code == 404
    assert problem(missing)["type"] == "/problems/not_found"
    wrong_method = await client.delete("/v1/prompts", headers=admin)
    assert wrong_method.status_code == 405
    problem(wrong_method)


async def test_options_lists_the_methods_served_at_the_collection_path(client: Client) -> None:
    response = await client.options("/v1/prompts")
    assert response.status_code == 204
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST", "OPTIONS"}


async def test_options_lists_every_method_served_at_each_path(client: Client, app: Litestar) -> None:
    routes = [route for route in app.routes if isinstance(route, HTTPRoute)]
    assert len(routes) >= 40
    for route in routes:
        served = {method for handler in route.route_handlers for method in handler.http_methods}
        concrete = re.sub(r"\{(\w+):int\}", "1", re.sub(r"\{(\w+):str\}", "anything", route.path))
        response = await client.options(concrete)
        assert response.status_code == 204, (route.path, response.text)
        assert set(response.headers["allow"].split(", ")) == served, route.path


async def test_malformed_json_is_400(client: Client, admin: Headers, clean_database: AsyncEngine) -> None:
    response = await client.post(
        "/v1/prompts", content=b'{"name": ', headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert problem(response)["type"] == "/problems/malformed_json"
    assert await count_rows(clean_database, "prompts") == 0


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
async def test_bodies_must_be_json(
    client: Client, admin: Headers, clean_database: AsyncEngine, content_type: str
) -> None:
    response = await client.post(
        "/v1/prompts", content=b'{"name": "x"}', headers={**admin, "Content-Type": content_type}
    )
    assert response.status_code == 415
    assert problem(response)["type"] == "/problems/unsupported_media_type"
    assert await count_rows(clean_database, "prompts") == 0


async def test_json_with_a_charset_is_fine(client: Client, admin: Headers) -> None:
    response = await client.post(
        "/v1/prompts", content=b'{"name": "x"}', headers={**admin, "Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 201


async def test_oversized_bodies_are_413_and_write_nothing(
    settings: Settings, admin: Headers, clean_database: AsyncEngine
) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048})
    async with serve_in_process(create_app(small)) as http:
        await create_prompt(http, admin, "greeting")
        response = await http.post(
            "/v1/prompts/greeting/versions", json={"kind": "text", "template": "x" * 5000}, headers=admin
        )
    assert response.status_code == 413
    assert problem(response)["type"] == "/problems/payload_too_large"
    assert await count_rows(clean_database, "prompt_versions") == 0


async def test_unexpected_errors_are_500_problems_without_internals(
    app: Litestar, client: Client, admin: Headers
) -> None:
    catalog = app.state.runtime.prompts

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    catalog.resolve = broken
    response = await client.get("/v1/prompts/anything", headers=admin)
    assert response.status_code == 500
    body = problem(response)
    assert body["type"] == "/problems/internal_error"
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
    assert body["request_id"] == response.headers["x-request-id"]


async def test_problem_types_are_documented(client: Client) -> None:
    response = await client.get("/problems/stale_expected_current")
    assert response.status_code == 200
    assert response.json()["status"] == 409
    assert "expected_current" in response.json()["description"]
    assert (await client.get("/problems/made_up")).status_code == 404


async def test_metrics_count_requests_by_route_template(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "metered")
    await client.get("/v1/prompts/metered", headers=admin)
    text = (await client.get("/metrics")).text
    assert 'registry_http_requests_total{method="POST",route="/v1/prompts",status="201"} 1.0' in text
    assert 'route="/v1/prompts/{name}",status="404"' in text
    assert "registry_http_request_duration_seconds_bucket" in text


async def test_openapi_schema_is_served(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    operations = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {"resolvePrompt", "renderPrompt", "promotePromptVersion", "rollbackPrompt", "createApiKey"} <= operations
    assert (await client.get("/schema")).status_code == 200
