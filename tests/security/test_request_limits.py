"""Size limits not covered elsewhere: page sizes, tags, template length, key names, out-of-range numbers.

Already tested: bodies over the limit (tests/test_http_boundary.py), event batches over 1000
(tests/experiments/test_events_api.py), long names and descriptions (tests/prompts/test_prompts_api.py).
"""

from __future__ import annotations

import pytest

from registry.settings import Settings
from tests.api import Client, Headers, create_prompt
from tests.conftest import problem


@pytest.mark.parametrize("path", ["/v1/prompts", "/v1/configs", "/v1/keys", "/v1/audit", "/v1/experiments"])
async def test_page_sizes_over_the_maximum_are_422(
    client: Client, admin: Headers, settings: Settings, path: str
) -> None:
    response = await client.get(path, params={"limit": settings.max_page_size + 1}, headers=admin)
    assert response.status_code == 422
    assert problem(response)["type"] == "/problems/validation_error"
    assert (await client.get(path, params={"limit": settings.max_page_size}, headers=admin)).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"name": "tagged", "tags": ["t" * 65]},
        {"name": "tagged", "tags": [f"t{i}" for i in range(33)]},
        {"name": "tagged", "tags": ["has space"]},
    ],
    ids=["tag over 64 characters", "more than 32 tags", "tag with a space"],
)
async def test_tags_are_bounded(client: Client, admin: Headers, body: dict[str, object]) -> None:
    response = await client.post("/v1/prompts", json=body, headers=admin)
    assert response.status_code == 422
    problem(response)


async def test_templates_over_the_maximum_are_refused(client: Client, admin: Headers, settings: Settings) -> None:
    await create_prompt(client, admin, "long")
    too_long = "x" * (settings.max_template_chars + 1)
    response = await client.post(
        "/v1/prompts/long/versions", json={"kind": "text", "template": too_long}, headers=admin
    )
    assert response.status_code == 422
    problem(response)
    chat = {"kind": "chat", "messages": [{"role": "user", "content": too_long}]}
    assert (await client.post("/v1/prompts/long/versions", json=chat, headers=admin)).status_code == 422


async def test_key_names_are_bounded(client: Client, admin: Headers) -> None:
    response = await client.post("/v1/keys", json={"name": "k" * 65, "scopes": ["read"]}, headers=admin)
    assert response.status_code == 422
    problem(response)


@pytest.mark.parametrize(
    "path",
    ["/v1/prompts/p?version=17592186044417", "/v1/prompts/p/versions/99999999999", "/v1/webhooks/99999999999999999999"],
)
async def test_numbers_past_the_column_range_are_422_not_500(client: Client, admin: Headers, path: str) -> None:
    await create_prompt(client, admin, "p")
    response = await client.get(path, headers=admin)
    assert response.status_code in (404, 422), response.text
    problem(response)


async def test_a_nul_character_in_text_is_422_not_500(client: Client, admin: Headers) -> None:
    response = await client.post("/v1/prompts", json={"name": "nul", "description": "a\u0000b"}, headers=admin)
    assert response.status_code == 422
    problem(response)


async def test_options_on_an_api_route_lists_methods_without_a_key(client: Client) -> None:
    response = await client.options("/v1/prompts")
    assert response.status_code == 204
    assert "POST" in response.headers["allow"]
