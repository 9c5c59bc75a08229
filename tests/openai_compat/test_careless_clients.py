"""What careless clients send the door, answered as OpenAI's error object with the registry's problem inside.

Each request goes to the app with the fast path and to the one without (``fast_path=False``), as
``test_fast_path.py`` does: both must answer alike.
"""

from __future__ import annotations

import pytest

from registry.openai_compat.fast_path import OpenAIFastPath
from tests.completions import test_fast_path as shared
from tests.completions.conftest import publish, unique
from tests.completions.fault_server import FaultServer
from tests.completions.test_fast_path import Case, answered_alike
from tests.conftest import AppClient, openai_problem
from tests.openai_compat.test_fast_path import CHAT, HI, TEXT, chat, door, joined_chunks, text

client, slow, keys, error_log, door = shared.client, shared.slow, shared.keys, shared.error_log, door

# A version number no version can have (the versions column is a 32-bit integer): the model does not exist.
# It was sent to the database, which refused it: a 422 naming nothing ("a value in the request is out of range").
PAST_THE_LARGEST_VERSION: list[Case] = [
    ("reader", CHAT, chat("prompt:greet@2147483648"), 404, True),
    ("reader", CHAT, chat("prompt:greet@9999999999", stream=True), 404, True),
    ("reader", CHAT, {"model": "config:cfg@2147483648", "messages": HI}, 404, True),
    ("reader", TEXT, text("prompt:essay@9999999999"), 404, True),
]
NO_SUCH_VERSION = "does not exist: versions are numbered from 1 to 2147483647"


async def test_a_version_past_the_largest_there_can_be_is_a_model_not_found(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]]
) -> None:
    answers = await answered_alike(client, slow, door, OpenAIFastPath, PAST_THE_LARGEST_VERSION, joined_chunks)
    for answer in answers:
        assert openai_problem(answer)["type"] == "/problems/model_not_found"
        assert NO_SUCH_VERSION in answer.json()["error"]["message"]


@pytest.mark.parametrize("model", ["prompt:greet@2147483648", "config:cfg@9999999999"])
async def test_retrieving_a_version_past_the_largest_there_can_be_is_a_model_not_found(
    client: AppClient, door: dict[str, dict[str, str]], model: str
) -> None:
    answer = await client.get(f"/v1/models/{model}", headers=door["reader"])

    assert answer.status_code == 404
    assert openai_problem(answer)["type"] == "/problems/model_not_found"
    assert answer.json()["error"]["message"] == f"the model '{model}' {NO_SUCH_VERSION}"


# OpenAI's API (and its SDKs' types) let ``stream`` be null, its default: false. It was a 422 naming ``stream``.
STREAM_NULL: list[Case] = [
    ("reader", CHAT, chat("prompt:greet", stream=None), 200, True),
    ("reader", TEXT, text("prompt:essay", stream=None), 200, True),
    ("reader", CHAT, {"model": "config:cfg", "messages": HI, "stream": None}, 200, True),
    ("reader", CHAT, chat("prompt:greet", stream=None, stream_options={"include_usage": True}), 422, True),
]


async def test_stream_null_is_not_streamed_and_alike_on_both_paths(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]]
) -> None:
    answers = await answered_alike(client, slow, door, OpenAIFastPath, STREAM_NULL, joined_chunks)

    assert [answer.headers["content-type"] for answer in answers[:3]] == ["application/json"] * 3
    objects = [answer.json()["object"] for answer in answers[:3]]
    assert objects == ["chat.completion", "text_completion", "chat.completion"]
    assert answers[3].json()["error"]["param"] == "stream_options"


# And ``prompt``: null is no text of the caller's, as an absent prompt is. It was a 422 naming ``prompt``.
PROMPT_NULL: list[Case] = [
    ("reader", TEXT, text("prompt:essay", prompt=None), 200, True),
    ("reader", TEXT, text("prompt:essay", prompt=None, stream=True), 200, True),
    ("reader", TEXT, {"model": "config:text", "prompt": None}, 200, True),
]


async def test_prompt_null_runs_the_rendered_text_alone_alike_on_both_paths(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]], fault: FaultServer
) -> None:
    model = unique("ok")
    await publish(client, door["admin"], backend="fault", model=model, prompt="story", config="story", kind="text")
    cases = [*PROMPT_NULL, ("reader", TEXT, text("prompt:story", prompt=None), 200, True)]

    answers = await answered_alike(client, slow, door, OpenAIFastPath, cases, joined_chunks)

    assert [answer.status_code for answer in answers] == [200] * 4
    assert [seen.payload["prompt"] for seen in fault.seen(model, TEXT)] == ["Say hello to Ada."] * 2  # fast, slow
