"""A NUL in a webhook's or an alert rule's description (the shared Description type) is a 422 naming the field.

Before: it reached PostgreSQL, which cannot store one, and came back as a 422 naming nothing.
"""

from __future__ import annotations

from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api import Headers
from tests.conftest import problem, serve_in_process


async def test_a_nul_in_a_description_is_refused_naming_it(
    app: Litestar, admin: Headers, clean_database: AsyncEngine
) -> None:
    async with serve_in_process(app) as client:
        hook = {"url": "http://127.0.0.1:9/hook", "events": ["*"], "description": "a\u0000b"}
        rule = {"name": "dec6-nul", "kind": "error_rate", "threshold": 0.1, "description": "a\u0000b"}
        refused = [
            await client.post("/v1/webhooks", json=hook, headers=admin),
            await client.post("/v1/alerts/rules", json=rule, headers=admin),
        ]
        accepted = await client.post("/v1/webhooks", json={**hook, "description": ""}, headers=admin)

    assert [(r.status_code, [e["field"] for e in problem(r).get("errors", [])]) for r in refused] == [
        (422, ["description"])
    ] * 2
    assert accepted.status_code == 201, accepted.text
