"""A long model name is echoed in an error only in part: its first 200 characters and an ellipsis.

``GET /v1/models/{model}`` takes a name of any length, and its 404 said it whole in the message, in the
problem's detail (twice each when the prompt's own "not found" quoted it again) and in the instance: a
5,000-character name was answered with 15 KB to 25 KB.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from registry.openai_compat.errors import ECHOED_CHARS, echoed
from tests.completions.conftest import publish, unique
from tests.conftest import openai_problem

LONG = "a" * 5000


def echoes(answer: httpx.Response, text: str) -> list[str]:
    """Where in the error the answer holds ``text`` whole."""
    error: dict[str, Any] = answer.json()["error"]
    problem = error["problem"]
    places = {"message": error["message"], "detail": problem["detail"], "instance": problem.get("instance", "")}
    return [place for place, said in places.items() if text in said]


@pytest.mark.parametrize(
    "model",
    [f"prompt:{LONG}", f"config:{LONG}@staging", f"prompt:greet@{'9' * 5000}", f"gpt-{LONG}"],
    ids=["no such prompt", "no such config", "a version past the largest", "not a registry model"],
)
async def test_retrieving_a_long_model_name_echoes_only_its_start(
    client: httpx.AsyncClient, admin: dict[str, str], model: str
) -> None:
    await publish(client, admin, backend="fault", model=unique("ok"))

    answer = await client.get(f"/v1/models/{model}", headers=admin)

    assert answer.status_code == 404
    assert openai_problem(answer)["type"] == "/problems/model_not_found"
    assert echoes(answer, model[:ECHOED_CHARS] + "\u2026") == ["message", "detail"]
    assert echoes(answer, model[: ECHOED_CHARS + 1]) == []
    assert len(answer.content) < 2000


async def test_a_long_model_name_on_the_completion_endpoints_is_echoed_only_in_part(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    model = "gpt-" + "x" * 290  # the longest a request's model may be is 300

    answer = await client.post("/v1/chat/completions", json={"model": model, "messages": []}, headers=admin)

    assert answer.status_code == 404
    assert echoes(answer, model[:ECHOED_CHARS] + "\u2026") == ["message", "detail"]
    assert echoes(answer, model[: ECHOED_CHARS + 1]) == []


async def test_a_short_model_name_is_echoed_whole(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    model = "prompt:" + "n" * (ECHOED_CHARS - len("prompt:"))

    answer = await client.get(f"/v1/models/{model}", headers=admin)

    assert answer.json()["error"]["message"] == f"the model '{model}' does not exist: no prompt is named '{model[7:]}'"
    assert answer.json()["error"]["problem"]["instance"] == f"/v1/models/{model}"[:ECHOED_CHARS] + "\u2026"


def test_echoed_cuts_after_its_limit_only() -> None:
    assert echoed("a" * ECHOED_CHARS) == "a" * ECHOED_CHARS
    assert echoed("a" * (ECHOED_CHARS + 1)) == "a" * ECHOED_CHARS + "\u2026"
