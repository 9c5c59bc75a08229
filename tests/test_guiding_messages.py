"""Error messages say what went wrong and what to do (issue 19 item 3), and printed variables take scalars (item 7)."""

from __future__ import annotations

import httpx
import pytest
from click.testing import CliRunner
from litestar import Litestar

from registry.auth.keys import generate_key
from registry.cli import main
from tests.api import create_config, create_prompt, create_version, promote
from tests.completions.conftest import serve_in_thread
from tests.conftest import problem

Headers = dict[str, str]


# -- API keys


async def _unauthorized(client: httpx.AsyncClient, authorization: str) -> str:
    response = await client.get("/v1/prompts", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    return str(problem(response)["detail"])


async def test_an_empty_bearer_says_the_key_is_missing(client: httpx.AsyncClient) -> None:
    detail = await _unauthorized(client, "Bearer ")
    assert "no API key after 'Bearer'" in detail
    assert "not 'Bearer <API key>'" not in detail


async def test_a_truncated_key_says_it_is_malformed(client: httpx.AsyncClient, admin: Headers) -> None:
    truncated = admin["Authorization"][:-5]
    detail = await _unauthorized(client, truncated)
    assert "malformed" in detail
    assert "copied whole" in detail


async def test_a_wrong_key_says_it_is_unknown(client: httpx.AsyncClient) -> None:
    _, _, unknown = generate_key()
    detail = await _unauthorized(client, f"Bearer {unknown}")
    assert detail.startswith("unknown API key")
    assert "registry keys create" in detail


async def test_a_token_that_is_no_registry_key_says_so(client: httpx.AsyncClient) -> None:
    detail = await _unauthorized(client, "Bearer sk-not-ours")
    assert "not a prompt-registry API key" in detail


async def test_another_scheme_says_to_use_bearer(client: httpx.AsyncClient, admin: Headers) -> None:
    _, _, token = admin["Authorization"].partition(" ")
    detail = await _unauthorized(client, f"Basic {token}")
    assert "'Bearer <API key>'" in detail


async def test_a_revoked_key_says_it_is_revoked(client: httpx.AsyncClient, admin: Headers) -> None:
    created = (await client.post("/v1/keys", json={"name": "old", "scopes": ["read"]}, headers=admin)).json()
    await client.delete(f"/v1/keys/{created['api_key']['id']}", headers=admin)
    detail = await _unauthorized(client, f"Bearer {created['key']}")
    assert "revoked" in detail


def test_the_cli_without_a_key_names_registry_api_key(app: Litestar) -> None:
    with serve_in_thread(app) as url:
        result = CliRunner().invoke(main, ["prompts", "list"], env={"REGISTRY_URL": url, "REGISTRY_API_KEY": ""})
    assert result.exit_code != 0
    assert "REGISTRY_API_KEY" in result.output
    assert "--api-key" in result.output


# -- routes


@pytest.mark.parametrize(
    ("method", "path", "encoded"),
    [
        ("POST", "/v1/prompts/support/summarize/render", "/v1/prompts/support%2Fsummarize/render"),
        ("GET", "/v1/prompts/support/summarize/versions/3", "/v1/prompts/support%2Fsummarize/versions/3"),
        ("GET", "/v1/configs/team/a/b/versions", "/v1/configs/team%2Fa%2Fb/versions"),
    ],
    ids=["render", "a version", "a config three levels deep"],
)
async def test_a_name_with_raw_slashes_gets_a_hint_to_encode_them(
    client: httpx.AsyncClient, method: str, path: str, encoded: str
) -> None:
    response = await client.request(method, path)
    assert response.status_code == 404
    detail = problem(response)["detail"]
    assert "%2F" in detail
    assert encoded in detail


async def test_a_path_outside_the_named_collections_has_no_encoding_hint(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing-here/a/b")
    assert problem(response)["detail"] == "no route matches this path"


# -- completions and variables


async def test_complete_without_the_backend_names_registry_backends(client: httpx.AsyncClient, admin: Headers) -> None:
    await create_prompt(client, admin, "greet")
    await create_config(client, admin, "small", max_context_tokens=4096)
    await create_version(client, admin, "greet", "Hi {{ name }}", config={"name": "small", "version": 1})
    await promote(client, admin, "greet", 1)
    response = await client.post("/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}}, headers=admin)
    assert response.status_code == 503
    detail = problem(response)["detail"]
    assert "'local'" in detail
    assert "REGISTRY_BACKENDS" in detail


async def test_invalid_variables_are_named_in_the_detail(client: httpx.AsyncClient, admin: Headers) -> None:
    await create_prompt(client, admin, "typed")
    schema = {"properties": {"count": {"type": "integer"}, "name": {"type": "string"}}, "required": ["name"]}
    await create_version(client, admin, "typed", "{{ name }} {{ count }}", input_schema=schema)
    await promote(client, admin, "typed", 1)
    response = await client.post("/v1/prompts/typed/render", json={"variables": {"count": "three"}}, headers=admin)
    detail = problem(response)["detail"]
    assert "count" in detail
    assert "name" in detail
    assert "is required" in detail


@pytest.mark.parametrize(("value", "text"), [(3, "n=3"), (2.5, "n=2.5"), (True, "n=True"), ("x", "n=x")])
async def test_a_printed_variable_takes_strings_numbers_and_booleans(
    client: httpx.AsyncClient, admin: Headers, value: object, text: str
) -> None:
    await create_prompt(client, admin, "count")
    await create_version(client, admin, "count", "n={{ n }}")
    response = await client.post(
        "/v1/prompts/count/render", json={"variables": {"n": value}, "label": "latest"}, headers=admin
    )
    assert response.status_code == 200, response.text
    assert response.json()["text"] == text


async def test_a_printed_variable_still_refuses_a_list(client: httpx.AsyncClient, admin: Headers) -> None:
    await create_prompt(client, admin, "count")
    await create_version(client, admin, "count", "n={{ n }}")
    response = await client.post(
        "/v1/prompts/count/render", json={"variables": {"n": [1, 2]}, "label": "latest"}, headers=admin
    )
    assert response.status_code == 422
    assert [e["field"] for e in problem(response)["errors"]] == ["variables.n"]
