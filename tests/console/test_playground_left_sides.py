"""A playground run left while one side waits for its first token closes the side that had started.

The sides open together; one that has its first token is a started completion whose stream nobody has read
yet. Left there (the page closed while the other side waited), it was dropped unread: its backend slot and
its key's budget hold stayed taken until the process stopped, and no usage was recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.completions.service import Caller, CompletionService
from registry.console.playground import Interleaved, Selection
from registry.console.playground_controller import provide_playground
from registry.lib.errors import RegistryError
from registry.runtime import Runtime
from registry.settings import Settings
from tests.completions.conftest import backend, fault, publish, unique, usage_rows  # noqa: F401 - fault: a fixture
from tests.completions.fault_server import FaultServer
from tests.conftest import AppClient, serve_in_process
from tests.waiting import eventually_async


@pytest.fixture
async def one_slot(
    settings: Settings,
    clean_database: AsyncEngine,
    fault: FaultServer,  # noqa: F811 - the fixture
) -> AsyncIterator[AppClient]:
    """The registry on the fault server as a backend with one slot, served in this test's event loop."""
    slot = backend(fault.url, max_concurrency=1, first_token_timeout=30.0, total_timeout=60.0)  # type: ignore[attr-defined]
    app: Litestar = create_app(settings.model_copy(update={"backends": {"fault": slot}}))
    async with serve_in_process(app) as http:
        yield http


async def test_leaving_while_one_side_waits_closes_the_side_that_started(
    one_slot: AppClient,
    admin: dict[str, str],
    clean_database: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime: Runtime = one_slot.app.state.runtime
    await publish(one_slot, admin, backend="fault", model=unique("ok"), prompt="sides", config="quick")
    await publish(one_slot, admin, backend="fault", model=unique("ok"), prompt=None, config="queued")
    opened: list[str] = []
    open_stream = CompletionService.open_stream

    async def noted(service: CompletionService, name: str, data: Any, caller: Caller) -> Any:
        stream = await open_stream(service, name, data, caller)
        opened.append(stream.meta.config.name)
        return stream

    monkeypatch.setattr(CompletionService, "open_stream", noted)
    playground = provide_playground(runtime)
    view = await playground.view("sides", Selection(version=1, compare_version=1, compare_config="queued@1"))
    running = asyncio.create_task(
        playground.open_runs(view, {"name": "Ada"}, Caller(key=None, request_id="sides"), max_tokens=None)
    )
    limiter = runtime.completions.upstream.backend("fault").limiter

    # One side has its first token and holds the backend's only slot; the other waits for that slot.
    async def one_open_one_queued() -> bool:
        return len(opened) == 1 and limiter.waiting == 1

    await eventually_async(one_open_one_queued, "one side open, the other queued")
    running.cancel()  # the page was left
    with pytest.raises(asyncio.CancelledError):
        await running

    assert not limiter.full  # the side that had started gave its slot back
    rows = await usage_rows(one_slot, admin, clean_database)
    assert sorted((row["config"], row["status"]) for row in rows) == [("queued", "cancelled"), ("quick", "cancelled")]


async def test_a_page_closed_before_its_sides_were_read_closes_them(one_slot: AppClient, admin: dict[str, str]) -> None:
    runtime: Runtime = one_slot.app.state.runtime
    await publish(one_slot, admin, backend="fault", model=unique("ok"), prompt="unread", config="unread-config")
    playground = provide_playground(runtime)
    view = await playground.view("unread", Selection(version=1))
    runs = await playground.open_runs(view, {"name": "Ada"}, Caller(key=None, request_id="unread"), max_tokens=None)
    limiter = runtime.completions.upstream.backend("fault").limiter
    assert limiter.full  # the run has its first token, and the only slot

    interleaved = Interleaved(runs, lambda exc: RegistryError(str(exc)))
    await interleaved.close()  # before its reading task took a step: the page's write failed at once

    assert not limiter.full
