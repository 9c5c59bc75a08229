"""Made-up prompt names asked for by a key holder: each absent name was kept in the catalog's one table beside the
prompts, so enough of them pushed every real prompt out; each was then read from the database again, and while
it was unreachable they could not be served at all (their copies are what is served then)."""

from __future__ import annotations

import pytest
from litestar import Litestar

from registry.app import create_app
from registry.settings import Settings
from tests.conftest import serve_in_process
from tests.experiments.conftest import make_prompt


@pytest.fixture
def app(settings: Settings, clean_database: object) -> Litestar:
    return create_app(settings.model_copy(update={"cache_max_prompts": 3}))


async def test_absent_names_do_not_push_prompts_out_of_the_catalog(app: Litestar, admin: dict[str, str]) -> None:
    catalog = app.state.runtime.prompts
    async with serve_in_process(app) as client:
        await make_prompt(client, admin, "kept")
        assert (await client.get("/v1/prompts/kept", headers=admin)).status_code == 200
        for i in range(10):
            assert (await client.get(f"/v1/prompts/made-up-{i}", headers=admin)).status_code == 404
        reads = catalog.misses
        assert (await client.get("/v1/prompts/kept", headers=admin)).status_code == 200
        assert catalog.misses == reads  # served from memory, not read again
        assert catalog.loaded == 1
