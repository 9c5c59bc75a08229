"""``GET /v1/models/{model}`` as the official SDK's ``models.retrieve`` calls it: names with ``:``, ``@`` and ``/``."""

from __future__ import annotations

import httpx
import openai
import pytest

from registry.auth.keys import Scope
from tests.api import create_prompt, create_version, promote
from tests.completions.conftest import publish, unique
from tests.conftest import KeyFactory, openai_problem
from tests.openai_compat.conftest import AsyncFactory, SyncFactory


@pytest.fixture
async def team_summary(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    """Config "cfg" and prompt "greet" in production; prompt "team/summary" with version 1 in staging only."""
    await publish(client, admin, backend="fault", model=unique("ok"))
    await create_prompt(client, admin, "team/summary")
    await create_version(client, admin, "team/summary", config={"name": "cfg", "version": 1})
    await promote(client, admin, "team/summary", 1, to="staging")


@pytest.mark.usefixtures("team_summary")
async def test_retrieve_answers_the_model_object_the_list_has(
    client: httpx.AsyncClient, make_key: KeyFactory, sdk: SyncFactory
) -> None:
    openai_client = sdk(client, await make_key(Scope.READ, name="app"))

    listed = {model.id: model for model in openai_client.models.list().data}
    greet = openai_client.models.retrieve("prompt:greet")
    cfg = openai_client.models.retrieve("config:cfg@1")

    assert greet == listed["prompt:greet"]
    assert (cfg.id, cfg.object, cfg.created, cfg.owned_by) == (
        "config:cfg@1",
        "model",
        listed["config:cfg"].created,
        "prompt-registry",
    )


@pytest.mark.usefixtures("team_summary")
async def test_retrieve_finds_a_name_with_a_slash_by_its_label_with_the_async_client(
    client: httpx.AsyncClient, make_key: KeyFactory, async_sdk: AsyncFactory
) -> None:
    openai_client = async_sdk(client, await make_key(Scope.READ, name="app"))

    model = await openai_client.models.retrieve("prompt:team/summary@staging")
    by_version = await openai_client.models.retrieve("prompt:team/summary@1")

    assert (model.id, model.object, model.owned_by) == ("prompt:team/summary@staging", "model", "prompt-registry")
    assert model.created > 0
    assert by_version.id == "prompt:team/summary@1"


@pytest.mark.usefixtures("team_summary")
@pytest.mark.parametrize(
    "model",
    [
        "prompt:team/summary",  # no production version: not in the list either
        "prompt:team/summary@2",
        "prompt:nope",
        "config:nope@staging",
        "config:cfg@staging",
        "gpt-4o",
        "prompt:greet@canary",
    ],
)
async def test_retrieve_of_a_model_there_is_no_version_of_is_404_model_not_found(
    client: httpx.AsyncClient, make_key: KeyFactory, sdk: SyncFactory, model: str
) -> None:
    openai_client = sdk(client, await make_key(Scope.READ, name="app"))

    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.models.retrieve(model)

    assert missing.value.status_code == 404
    assert missing.value.code == "model_not_found"
    assert missing.value.body["problem"]["type"] == "/problems/model_not_found"  # type: ignore[index]


@pytest.mark.usefixtures("team_summary")
@pytest.mark.parametrize(("key", "status", "code"), [("none", 401, "unauthorized"), ("analyst", 403, "forbidden")])
async def test_retrieve_needs_a_key_with_the_read_scope(
    client: httpx.AsyncClient, make_key: KeyFactory, key: str, status: int, code: str
) -> None:
    headers = {} if key == "none" else await make_key(Scope.ANALYZE, name="analyst")

    answer = await client.get("/v1/models/prompt:greet", headers=headers)

    assert answer.status_code == status
    assert openai_problem(answer)["type"] == f"/problems/{code}"
    assert answer.json()["error"]["code"] == code


@pytest.mark.usefixtures("team_summary")
async def test_the_sdk_raises_its_auth_errors_for_retrieve(
    client: httpx.AsyncClient, make_key: KeyFactory, sdk: SyncFactory
) -> None:
    analyst = sdk(client, await make_key(Scope.ANALYZE, name="analyst"))
    forged = sdk(client, {"Authorization": "Bearer prk_aaaaaaaaaaaa_" + "A" * 43})

    with pytest.raises(openai.PermissionDeniedError):
        analyst.models.retrieve("prompt:greet")
    with pytest.raises(openai.AuthenticationError):
        forged.models.retrieve("prompt:greet")
