"""One key opening change feeds without end: a feed never ends by itself, so one key could hold every connection
a worker keeps (REGISTRY_MAX_CONNECTIONS_PER_WORKER) and every other caller was refused at the door."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx
import pytest
from litestar import Litestar

from registry.app import create_app
from registry.auth.keys import Scope
from registry.settings import Settings
from tests.conftest import KeyFactory, problem, serve_in_process, serve_over_http
from tests.feed.test_change_feed import events
from tests.seams.conftest import eventually


@pytest.fixture
def app(settings: Settings, clean_database: object) -> Litestar:
    return create_app(settings.model_copy(update={"feed_max_listeners_per_key": 2}))


async def test_a_key_holds_as_many_feeds_as_it_may_and_the_others_keep_theirs(
    app: Litestar, make_key: KeyFactory
) -> None:
    greedy = await make_key(Scope.READ, name="greedy")
    other = await make_key(Scope.READ, name="other")
    hub = app.state.runtime.feed
    async with serve_in_process(app), serve_over_http(app) as base, httpx.AsyncClient(base_url=base) as http:
        async with AsyncExitStack() as held:
            listening = []  # each feed's events, kept: a dropped reader closes its response
            for _ in range(2):
                response = await held.enter_async_context(http.stream("GET", "/v1/changes", headers=greedy))
                listening.append(events(response))
                assert (await anext(listening[-1]))[0] == "hello"
            refused = await http.get("/v1/changes", headers=greedy)
            assert refused.status_code == 429, refused.text
            assert problem(refused)["type"] == "/problems/too_many_feeds"
            assert int(refused.headers["retry-after"]) > 0
            async with http.stream("GET", "/v1/changes", headers=other) as response:
                assert (await anext(events(response)))[0] == "hello"

        async def closed() -> bool:  # the server noticed the greedy key's feeds go
            return len(hub) == 0

        await eventually(closed, "the closed feeds to be forgotten")
        async with http.stream("GET", "/v1/changes", headers=greedy) as response:
            assert response.status_code == 200
            assert (await anext(events(response)))[0] == "hello"
