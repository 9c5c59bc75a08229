"""A list's page parameters out of range (``limit=0``, past the largest page, a cursor that was never issued) are
refused by a dependency Litestar resolves after the request's database session; Litestar then never closes that
session's generator, and its finalization by the garbage collector failed, logged at ERROR by asyncio for each
such request ("Task exception was never retrieved ... aclose(): asynchronous generator is already running")."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from tests.conftest import AppClient


async def test_refused_page_parameters_leave_nothing_for_the_event_loop_to_report(
    client: AppClient, admin: dict[str, str]
) -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        for query in ({"limit": "0"}, {"limit": "100000"}, {"cursor": "%%%"}):
            for path in ("/v1/prompts", "/v1/keys", "/v1/alerts/incidents"):
                response = await client.get(path, params=query, headers=admin)
                assert response.status_code in (400, 422), response.text
        gc.collect()  # what the requests left behind is finalized now, in tasks of this loop
        for _ in range(10):
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert [context["message"] for context in reported] == []
