"""``GET /v1/models`` answers a bounded page: what OpenAI's SDK reads unpaged, then ``after`` and ``limit``.

The app runs in process (OpenAI's async SDK on an ASGI transport), so the test reads the SQL
its engine runs: each list query is bounded by the page, whatever the number of prompts.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from openai import AsyncOpenAI
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope
from registry.settings import Settings
from tests.api import create_config, create_prompt, create_version, path, promote
from tests.conftest import AppClient, KeyFactory, openai_problem, serve_in_process

PAGE = 3
PROMPTS = ["p0", "p1", "p2", "p3"]
CONFIGS = ["c0", "c1"]
ALL = [f"prompt:{name}" for name in PROMPTS] + [f"config:{name}" for name in CONFIGS]


@pytest.fixture
async def client(settings: Settings, clean_database: AsyncEngine, admin: dict[str, str]) -> AsyncIterator[AppClient]:
    """Prompts p0-p3 and configs c0-c1 in production, a prompt and a config without; pages of 3 at most."""
    app: Litestar = create_app(settings.model_copy(update={"openai_models_page_size": PAGE}))
    async with serve_in_process(app) as http:
        for name in ["draft", *PROMPTS]:
            await create_prompt(http, admin, name)
            await create_version(http, admin, name)
            if name != "draft":
                await promote(http, admin, name, 1)
        for name in ["cdraft", *CONFIGS]:
            await create_config(http, admin, name)
            if name != "cdraft":
                response = await http.post(
                    f"/v1/configs/{path(name)}/versions/1/promote",
                    json={"to": "production", "expected_current": None},
                    headers=admin,
                )
                assert response.status_code == 200, response.text
        yield http


@pytest.fixture
async def reader(make_key: KeyFactory) -> dict[str, str]:
    return await make_key(Scope.READ, name="app")


@pytest.fixture
async def sdk(client: AppClient, reader: dict[str, str]) -> AsyncIterator[AsyncOpenAI]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app))
    openai_client = AsyncOpenAI(
        base_url="http://testserver/v1",
        api_key=reader["Authorization"].removeprefix("Bearer "),
        http_client=http,
        max_retries=0,
    )
    yield openai_client
    await openai_client.close()


class Statements:
    """The SQL the app's engine runs that reads the prompt or config tables, with its parameters."""

    def __init__(self, app: Litestar) -> None:
        self.seen: list[tuple[str, Any]] = []
        engine = app.state.runtime.engine.sync_engine

        def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
            if re.search(r"\bFROM (prompts|model_configs)\b", statement):
                self.seen.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", record)

    def limits(self) -> list[int]:
        """The row limit of each statement: its LIMIT's bound parameter (the last one), or none."""
        found = []
        for statement, parameters in self.seen:
            assert "LIMIT" in statement, statement
            found.append(int(list(parameters)[-1] if not isinstance(parameters, dict) else parameters["param_1"]))
        return found


async def test_the_sdk_gets_the_first_page_and_after_reads_on(client: AppClient, sdk: AsyncOpenAI) -> None:
    first = await sdk.models.with_raw_response.list()
    listed = [model.id async for model in await sdk.models.list()]
    rest = (await sdk.models.with_raw_response.list(extra_query={"after": "prompt:p2"})).http_response.json()

    body = first.http_response.json()
    assert listed == ALL[:PAGE]
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ALL[:PAGE]
    assert (body["has_more"], body["first_id"], body["last_id"]) == (True, "prompt:p0", "prompt:p2")
    assert [model["id"] for model in rest["data"]] == ALL[PAGE:]
    assert (rest["has_more"], rest["last_id"]) == (False, "config:c1")


async def test_limit_and_after_walk_the_whole_list_one_model_at_a_time(
    client: AppClient, reader: dict[str, str]
) -> None:
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": 1, **({"after": after} if after else {})}
        body = (await client.get("/v1/models", params=params, headers=reader)).json()
        seen += [model["id"] for model in body["data"]]
        if not body["has_more"]:
            break
        after = body["last_id"]

    assert seen == ALL


async def test_a_page_ending_with_the_last_prompt_knows_the_configs_follow(
    client: AppClient, reader: dict[str, str]
) -> None:
    body = (await client.get("/v1/models", params={"after": "prompt:p0"}, headers=reader)).json()
    configs = (await client.get("/v1/models", params={"after": "config:c0"}, headers=reader)).json()
    gone = (await client.get("/v1/models", params={"after": "prompt:p1x"}, headers=reader)).json()

    assert [model["id"] for model in body["data"]] == ["prompt:p1", "prompt:p2", "prompt:p3"]
    assert body["has_more"] is True
    assert [model["id"] for model in configs["data"]] == ["config:c1"]
    assert [model["id"] for model in gone["data"]] == ["prompt:p2", "prompt:p3", "config:c0"]


async def test_each_list_query_reads_at_most_a_page_and_one_row(client: AppClient, reader: dict[str, str]) -> None:
    statements = Statements(client.app)

    unpaged = await client.get("/v1/models", headers=reader)
    one = await client.get("/v1/models", params={"limit": 1, "after": "prompt:p3"}, headers=reader)

    assert unpaged.status_code == one.status_code == 200
    # The unpaged answer is full of prompts before the configs; the one after the last prompt reads both.
    assert statements.limits() == [PAGE + 1, 2, 2]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": PAGE + 1}, "limit"),
        ({"after": "p0"}, "after"),
        ({"after": "model:p0"}, "after"),
        ({"after": "prompt:"}, "after"),
    ],
    ids=["limit-zero", "limit-over-the-page-size", "after-without-kind", "after-of-another-kind", "after-empty-name"],
)
async def test_a_bad_limit_or_after_is_a_422_naming_it(
    client: AppClient, reader: dict[str, str], params: dict[str, Any], field: str
) -> None:
    response = await client.get("/v1/models", params=params, headers=reader)

    assert response.status_code == 422
    assert field in {error["field"] for error in openai_problem(response)["errors"]}
