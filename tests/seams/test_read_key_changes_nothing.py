"""A read key (an app's) reaches every route that changes state and changes nothing outside its own scope."""

from __future__ import annotations

import re

from litestar import Litestar
from litestar.routes import HTTPRoute
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from tests.conftest import KeyFactory, count_rows, problem, serve_in_process
from tests.experiments.conftest import make_metric, make_prompt

# What an app with a read key may do that writes: render, complete (both doors), report events and exposures,
# preview an experiment (records nothing).
READ_WRITES = {
    ("POST", "/v1/prompts/{name:str}/render"),
    ("POST", "/v1/prompts/{name:str}/complete"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/events"),
    ("POST", "/v1/exposures"),
    ("POST", "/v1/experiments/{key:str}/preview"),
}
VALUES = {"name": "greet", "key": "tone", "version": "1", "rollout_id": "1", "action": "abort", "unit": "user-1"}


def mutating_api_routes(app: Litestar) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith("/v1/"):
            continue
        for method in sorted(route.methods - {"GET", "HEAD", "OPTIONS"}):
            found.append((method, route.path))
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", lambda m: VALUES.get(m.group(1), "1"), path)


async def test_every_other_changing_route_refuses_a_read_key_and_nothing_is_audited(
    app: Litestar, admin: dict[str, str], make_key: KeyFactory, clean_database: AsyncEngine
) -> None:
    reader = await make_key(Scope.READ, name="app")
    async with serve_in_process(app) as client:
        await make_prompt(client, admin, "greet")
        await make_metric(client, admin, "converted")
        audited = await count_rows(clean_database, "audit_log")
        routes = mutating_api_routes(app)
        assert len(routes) > 30  # the route table was read, not an empty list
        assert set(routes) >= READ_WRITES
        for method, path in routes:
            if (method, path) in READ_WRITES:
                continue
            response = await client.request(method, concrete(path), json={}, headers=reader)
            assert response.status_code == 403, (method, path, response.status_code)
            assert problem(response)["type"] == "/problems/forbidden"
        assert await count_rows(clean_database, "audit_log") == audited
