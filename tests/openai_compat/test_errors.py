"""Failures answered as OpenAI's error object, with the API's statuses, so the SDK raises its matching exceptions."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from registry.auth.keys import Scope
from registry.openai_compat.errors import openai_code
from tests.completions.conftest import publish, unique
from tests.completions.fault_server import FaultServer
from tests.conftest import KeyFactory
from tests.openai_compat.conftest import AsyncFactory, SyncFactory

CHAT = "/v1/chat/completions"


@pytest.fixture
async def published(client: httpx.AsyncClient, admin: dict[str, str]) -> str:
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, max_context_tokens=4096)
    return model


def openai_error(response: httpx.Response) -> dict[str, Any]:
    """Assert OpenAI's error object, carrying the problem the rest of the API answers with; return it."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "problem"}
    assert error["code"] == openai_code(error["type"])
    assert error["problem"]["type"] == f"/problems/{error['type']}"
    assert error["problem"]["status"] == response.status_code
    assert error["problem"]["detail"] == error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "status", "code", "param", "exception"),
    [
        ({"model": "gpt-4o", "messages": []}, 404, "model_not_found", None, openai.NotFoundError),
        ({"model": "prompt:greet@canary", "messages": []}, 404, "model_not_found", None, openai.NotFoundError),
        # The cause is the problem's type (prompt_not_found...): test_model_not_found_code.py
        ({"model": "prompt:nope", "messages": []}, 404, "model_not_found", None, openai.NotFoundError),
        ({"model": "prompt:greet@7", "messages": []}, 404, "model_not_found", None, openai.NotFoundError),
        ({"model": "prompt:greet@staging", "messages": []}, 404, "model_not_found", None, openai.NotFoundError),
        (
            {"model": "config:nope", "messages": [{"role": "user", "content": "Hi"}]},
            404,
            "model_not_found",
            None,
            openai.NotFoundError,
        ),
        (
            {"model": "prompt:greet", "messages": []},
            422,
            "variables_invalid",
            "variables.name",
            openai.UnprocessableEntityError,
        ),
        (
            {"model": "prompt:greet", "messages": [], "temperature": 0.2, "variables": {"name": "Ada"}},
            422,
            "validation_error",
            "temperature",
            openai.UnprocessableEntityError,
        ),
        (
            {"model": "prompt:greet", "messages": [], "max_tokens": 9, "variables": {"name": "Ada"}},
            422,
            "validation_error",
            "max_tokens",
            openai.UnprocessableEntityError,
        ),
        (
            {"model": "config:cfg", "messages": [], "variables": {"name": "Ada"}},
            422,
            "validation_error",
            "variables",
            openai.UnprocessableEntityError,
        ),
        (
            {"model": "config:cfg", "messages": []},
            422,
            "validation_error",
            "messages",
            openai.UnprocessableEntityError,
        ),
        (
            {"model": "prompt:greet", "messages": [{"role": "tool", "content": "x"}]},
            422,
            "validation_error",
            "messages[0].role",
            openai.UnprocessableEntityError,
        ),
        ({"model": "prompt:greet", "n": 2}, 422, "validation_error", "n", openai.UnprocessableEntityError),
    ],
    ids=[
        "not a registry model",
        "unknown label",
        "unknown prompt",
        "unknown version",
        "no staging version",
        "unknown config",
        "variables missing",
        "sampling field the config sets",
        "max_tokens above the config's",
        "variables for a config",
        "a config without messages",
        "a role not taken",
        "more than one choice",
    ],
)
async def test_refused_requests_are_openai_errors_and_reach_no_backend(
    client: httpx.AsyncClient,
    published: str,
    admin: dict[str, str],
    fault: FaultServer,
    sdk: SyncFactory,
    body: dict[str, Any],
    status: int,
    code: str,
    param: str | None,
    exception: type[openai.APIStatusError],
) -> None:
    response = await client.post(CHAT, json=body, headers=admin)
    model, rest = body["model"], {k: v for k, v in body.items() if k not in ("model", "messages")}
    with pytest.raises(exception) as raised:
        sdk(client, admin).chat.completions.create(model=model, messages=body.get("messages", []), extra_body=rest)

    assert response.status_code == status
    error = openai_error(response)
    assert (error["code"], error["param"]) == (code, param)
    assert raised.value.status_code == status
    assert raised.value.code == code
    assert fault.seen(published) == []


@pytest.mark.parametrize(
    ("scopes", "exception"), [((), openai.AuthenticationError), ((Scope.ANALYZE,), openai.PermissionDeniedError)]
)
async def test_a_key_without_the_read_scope_is_refused(
    client: httpx.AsyncClient,
    published: str,
    make_key: KeyFactory,
    sdk: SyncFactory,
    scopes: tuple[Scope, ...],
    exception: type[openai.APIStatusError],
) -> None:
    key = await make_key(*scopes) if scopes else {"Authorization": "Bearer pr_not-a-key"}

    with pytest.raises(exception) as raised:
        sdk(client, key).chat.completions.create(
            model="prompt:greet", messages=[], extra_body={"variables": {"name": "A"}}
        )

    assert raised.value.code in ("unauthorized", "forbidden")
    assert carries_its_problem(raised.value)


def carries_its_problem(error: openai.APIStatusError) -> bool:
    body = error.body
    return isinstance(body, dict) and body["problem"]["status"] == error.status_code


async def test_key_over_its_budget_gets_a_rate_limit_error_with_retry_after(
    client: httpx.AsyncClient, published: str, admin: dict[str, str], make_key: KeyFactory, sdk: SyncFactory
) -> None:
    app_key = await make_key(Scope.READ, name="app")
    key_id = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]
    assert (
        await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": 10}, headers=admin)
    ).status_code == 200
    openai_client = sdk(client, app_key)
    request = {"model": "prompt:greet", "messages": [], "extra_body": {"variables": {"name": "Ada"}}}

    openai_client.chat.completions.create(**request)  # 7 + 3 tokens: the whole budget
    with pytest.raises(openai.RateLimitError) as raised:
        openai_client.chat.completions.create(**request)

    assert raised.value.status_code == 429
    assert raised.value.code == "over_budget"
    assert "used 10 of its 10 tokens" in raised.value.message
    assert int(raised.value.response.headers["retry-after"]) > 0


async def test_backend_down_is_a_server_error_streamed_or_not(
    client: httpx.AsyncClient, admin: dict[str, str], async_sdk: AsyncFactory
) -> None:
    await publish(client, admin, backend="down", model="anything", max_context_tokens=4096)
    request: dict[str, Any] = {"model": "prompt:greet", "messages": [], "extra_body": {"variables": {"name": "Ada"}}}
    openai_client = async_sdk(client, admin)

    with pytest.raises(openai.InternalServerError) as streamed:
        await openai_client.chat.completions.create(**request, stream=True)
    with pytest.raises(openai.InternalServerError) as plain:
        await openai_client.chat.completions.create(**request)

    assert streamed.value.status_code == 502
    assert streamed.value.code == "upstream_unavailable"
    assert plain.value.status_code == 503  # its failures opened the backend's breaker
    assert plain.value.code == "circuit_open"
    assert int(plain.value.response.headers["retry-after"]) > 0


async def test_failure_after_the_first_token_ends_the_stream_with_an_error_the_sdk_raises(
    client: httpx.AsyncClient, admin: dict[str, str], sdk: SyncFactory
) -> None:
    await publish(client, admin, backend="fault", model=unique("reset-after:2"), max_context_tokens=4096)
    stream = sdk(client, admin).chat.completions.create(
        model="prompt:greet", messages=[], stream=True, extra_body={"variables": {"name": "Ada"}}
    )
    texts: list[str] = []

    def read() -> None:
        texts.extend(chunk.choices[0].delta.content or "" for chunk in stream)

    with pytest.raises(openai.APIError) as raised:
        read()

    assert "".join(texts) == "Hello from"
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["type"] == "upstream_unavailable"
    assert raised.value.body["problem"]["status"] == 502


async def test_malformed_json_is_a_400_openai_error(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.post(
        CHAT, content=b'{"model": "prompt:greet", ', headers={**admin, "Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert openai_error(response)["code"] == "malformed_json"


async def test_openapi_declares_openai_shapes_for_answers_and_errors(client: httpx.AsyncClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    chat = document["paths"]["/v1/chat/completions"]["post"]

    assert chat["operationId"] == "createChatCompletion"
    assert document["paths"]["/v1/completions"]["post"]["operationId"] == "createCompletion"
    assert document["paths"]["/v1/models"]["get"]["operationId"] == "listModels"
    assert "prompt:NAME" in chat["description"]
    for status in ("404", "405", "414", "415", "422", "429", "431", "502"):  # refused before routing too
        content = chat["responses"][status]["content"]
        assert list(content) == ["application/json"]
        assert content["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
