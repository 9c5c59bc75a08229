"""A chat message's ``name`` (OpenAI's participant name) is taken and passed on to the backend with its message.

It was refused as an unknown field (a 422 naming ``messages[0].name``), so an app written against OpenAI's
SDK that names its participants could not call the registry at all.
"""

from __future__ import annotations

import pytest

from registry.completions.payload import token_upper_bound
from registry.openai_compat.fast_path import OpenAIFastPath
from tests.completions import test_fast_path as shared
from tests.completions.conftest import publish, unique
from tests.completions.fault_server import CHAT as UPSTREAM_CHAT
from tests.completions.fault_server import FaultServer
from tests.completions.test_fast_path import Case, answered_alike
from tests.conftest import AppClient
from tests.openai_compat.test_fast_path import CHAT, chat, door, joined_chunks

client, slow, keys, error_log, door = shared.client, shared.slow, shared.keys, shared.error_log, door

ADA = {"role": "user", "content": "Hi", "name": "ada"}
GRACE = {"role": "assistant", "content": "Hello", "name": "grace"}


async def test_named_messages_run_alike_on_both_paths_and_reach_the_backend_with_their_names(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]], fault: FaultServer
) -> None:
    model = unique("ok")
    await publish(client, door["admin"], backend="fault", model=model, prompt="named", config="named")
    turns = [ADA, {"role": "user", "content": "again"}, GRACE]
    cases: list[Case] = [
        ("reader", CHAT, chat("prompt:named", messages=turns), 200, True),
        ("reader", CHAT, chat("prompt:named", messages=turns, stream=True), 200, True),
        ("reader", CHAT, {"model": "config:named", "messages": [ADA]}, 200, True),
        ("reader", CHAT, chat("prompt:named", messages=[{**ADA, "name": None}]), 200, True),
    ]

    answers = await answered_alike(client, slow, door, OpenAIFastPath, cases, joined_chunks)

    assert [answer.status_code for answer in answers] == [200] * 4
    sent = [seen.payload["messages"] for seen in fault.seen(model, UPSTREAM_CHAT)]
    prompt_turn = {"role": "user", "content": "Say hello to Ada."}
    with_turns = [prompt_turn, ADA, {"role": "user", "content": "again"}, GRACE]
    assert sent == [with_turns] * 4 + [[ADA]] * 2 + [[prompt_turn, {"role": "user", "content": "Hi"}]] * 2


@pytest.mark.parametrize(
    ("name", "reason"),
    [("", "empty"), ("a" * 257, "longer than 256"), ("a\x00b", "a NUL"), (7, "not a string")],
    ids=["empty", "too long", "NUL", "a number"],
)
async def test_a_name_that_is_no_participant_name_is_refused_alike_on_both_paths_naming_it(
    client: AppClient, slow: AppClient, door: dict[str, dict[str, str]], fault: FaultServer, name: object, reason: str
) -> None:
    body = chat("prompt:greet", messages=[{"role": "user", "content": "Hi"}, {**ADA, "name": name}])
    before = len(fault.requests)
    [answer] = await answered_alike(client, slow, door, OpenAIFastPath, [("reader", CHAT, body, 422, False)])

    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("validation_error", "messages[1].name"), reason
    assert len(fault.requests) == before  # refused before any backend was asked


def test_a_name_counts_toward_the_prompts_token_bound() -> None:
    """The model reads the name (the chat template writes it): the bound that clears short prompts counts it."""
    plain = {"messages": [{"role": "user", "content": "Hi"}]}
    named = {"messages": [{"role": "user", "content": "Hi", "name": "é" * 100}]}

    assert token_upper_bound(named) == token_upper_bound(plain) + 200
