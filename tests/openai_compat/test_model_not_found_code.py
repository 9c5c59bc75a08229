"""A model there is no version of is ``code: model_not_found`` on every door endpoint, as OpenAI answers it.

``prompt:nope`` was ``code: prompt_not_found`` on the completion endpoints but ``model_not_found`` on
``GET /v1/models/{model}``, so an app catching OpenAI's ``model_not_found`` missed it on the endpoints it
calls most. The completion's error keeps the registry's cause as its ``type`` and problem type (the README
documents them), and both paths of the door answer alike.
"""

from __future__ import annotations

import pytest

from registry.openai_compat.fast_path import OpenAIFastPath
from tests.completions import test_fast_path as shared
from tests.completions.test_fast_path import Case, answered_alike
from tests.conftest import AppClient
from tests.openai_compat.test_fast_path import CHAT, HI, TEXT, chat, door, joined_chunks, text

client, slow, keys, error_log, door = shared.client, shared.slow, shared.keys, shared.error_log, door

MISSING: list[tuple[Case, str]] = [
    # (case, the cause: the error's type and its problem's)
    (("reader", CHAT, chat("prompt:nope"), 404, True), "prompt_not_found"),
    (("reader", CHAT, chat("prompt:nope", stream=True), 404, True), "prompt_not_found"),
    (("reader", TEXT, text("prompt:no/such"), 404, True), "prompt_not_found"),
    (("reader", CHAT, chat("prompt:greet@7"), 404, True), "prompt_version_not_found"),
    (("reader", TEXT, text("prompt:essay@latest", stream=True), 200, True), ""),  # there is one: no error
    (("reader", TEXT, text("prompt:essay@staging"), 404, True), "label_not_set"),
    (("reader", CHAT, {"model": "config:nope", "messages": HI}, 404, True), "config_not_found"),
    (("reader", CHAT, {"model": "config:cfg@9", "messages": HI}, 404, True), "config_version_not_found"),
    (("reader", CHAT, {"model": "config:cfg@staging", "messages": HI}, 404, True), "label_not_set"),
    (("reader", CHAT, chat("gpt-4o"), 404, True), "model_not_found"),
]


async def test_a_model_with_no_version_is_model_not_found_alike_on_both_paths_keeping_its_cause(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]]
) -> None:
    answers = await answered_alike(client, slow, door, OpenAIFastPath, [case for case, _ in MISSING], joined_chunks)

    for (case, cause), answer in zip(MISSING, answers, strict=True):
        if not cause:
            continue
        error = answer.json()["error"]
        assert (error["code"], error["type"], error["problem"]["type"]) == (
            "model_not_found",
            cause,
            f"/problems/{cause}",
        ), case


@pytest.mark.parametrize("model", ["prompt:nope", "prompt:greet@7", "config:nope"])
async def test_retrieve_and_a_completion_give_the_same_code_for_a_model_with_no_version(
    client: AppClient, door: dict[str, dict[str, str]], model: str
) -> None:
    body = {"model": model, "messages": HI, **({"variables": {"name": "Ada"}} if model.startswith("prompt") else {})}

    completion = await client.post(CHAT, json=body, headers=door["reader"])
    retrieved = await client.get(f"/v1/models/{model}", headers=door["reader"])

    assert (completion.status_code, retrieved.status_code) == (404, 404)
    assert completion.json()["error"]["code"] == retrieved.json()["error"]["code"] == "model_not_found"


async def test_other_problems_keep_their_type_as_their_code(client: AppClient, door: dict[str, dict[str, str]]) -> None:
    kind = await client.post(TEXT, json=text("prompt:greet"), headers=door["reader"])
    variables = await client.post(CHAT, json=chat("prompt:greet", variables={}), headers=door["reader"])

    assert kind.json()["error"]["code"] == kind.json()["error"]["type"] == "prompt_kind_mismatch"
    assert variables.json()["error"]["code"] == variables.json()["error"]["type"] == "variables_invalid"
