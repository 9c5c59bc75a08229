"""A NUL (U+0000) in a request: refused by name where it would become a stored identifier, stored as U+FFFD where it
is text that cannot be refused (the model's answer, a prompt rendered from variables, the caller's messages).

PostgreSQL text holds no NUL. One such usage record used to fail its batch on every flush, and the batch was put
back each time, so no usage record of any key was written again until the process ended.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import unique
from tests.completions.fault_server import say
from tests.conftest import openai_problem, problem
from tests.seams.conftest import Served, ok, rows
from tests.seams.test_seams_dec5 import ADA, CHAT, COMPLETE, config, prompt

TEXT = "/v1/completions"
NUL = "a\x00b"

# path, body, the field the refusal names
REFUSED: dict[str, tuple[str, dict[str, Any], str]] = {
    "complete unit": (COMPLETE, {"variables": ADA, "unit": NUL}, "unit"),
    "complete user": (COMPLETE, {"variables": ADA, "user": NUL}, "user"),
    "chat user": (CHAT, {"model": "prompt:greet", "variables": ADA, "user": NUL}, "user"),
    "chat unit": (CHAT, {"model": "prompt:greet", "variables": ADA, "unit": NUL}, "unit"),
    "text user": (TEXT, {"model": "config:main", "prompt": "Hi", "user": NUL}, "user"),
    "chat model": (CHAT, {"model": "prompt:gr\x00eet", "variables": ADA}, "model"),
    "text model": (TEXT, {"model": "config:ma\x00in", "prompt": "Hi"}, "model"),
    "render unit": ("/v1/prompts/greet/render", {"variables": ADA, "unit": NUL}, "unit"),
    "exposure unit": (
        "/v1/exposures",
        {"exposures": [{"experiment": "e", "unit": NUL, "variant": "v"}]},
        "exposures[0].unit",
    ),
}


@pytest.fixture(params=[True, False], ids=["fast-path", "litestar"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def greet(served: Served, admin: dict[str, str], fast_path: bool, *, model: str, store_io: bool) -> Any:
    client = await served(fast_path=fast_path)
    await config(client, admin, "main", backend="fault", model=model)
    await prompt(client, admin, "Say hello to {{ name }}.")
    if store_io:
        await ok(await client.patch("/v1/prompts/greet", json={"store_io": True}, headers=admin))
    return client


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_nul_in_a_field_stored_as_an_identifier_is_refused_by_name(
    case: str, served: Served, admin: dict[str, str], clean_database: AsyncEngine, fast_path: bool
) -> None:
    path, body, field = REFUSED[case]
    client = await greet(served, admin, fast_path, model=unique("ok"), store_io=False)

    refused = await client.post(path, json=body, headers=admin)

    assert refused.status_code == 422, refused.text
    details = openai_problem(refused) if path in (CHAT, TEXT) else problem(refused)
    assert [error["field"] for error in details["errors"]] == [field], details
    await ok(await client.post(COMPLETE, json={"variables": {"name": "fine"}}, headers=admin))
    await ok(await client.get("/v1/usage", headers=admin))  # flushes the buffer
    assert len(await rows(clean_database, "SELECT unit FROM completions")) == 1


async def test_a_nul_in_an_events_unit_rejects_that_event_by_name(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine, fast_path: bool
) -> None:
    client = await greet(served, admin, fast_path, model=unique("ok"), store_io=False)
    event = {"unit": NUL, "metric": "m", "idempotency_key": unique("k"), "timestamp": "2026-01-01T00:00:00Z"}

    answer = await ok(await client.post("/v1/events", json={"events": [event]}, headers=admin), 207)

    assert answer["rejected"] == 1, answer
    assert [error["field"] for error in answer["items"][0]["errors"]] == ["unit"], answer


STORED: dict[str, tuple[str, dict[str, Any], str, str | None]] = {
    # path, body, the model's answer, what is stored as the prompt's text (None: not checked)
    "variables": (COMPLETE, {"variables": {"name": "A\x00da"}}, "Hello", "user: Say hello to A\ufffdda."),
    "door message": (
        CHAT,
        {"model": "prompt:greet", "messages": [{"role": "user", "content": "x\x00"}], "variables": ADA},
        "Hello",
        None,
    ),
    "answer": (COMPLETE, {"variables": ADA}, "bad\x00answer", "user: Say hello to Ada."),
}


@pytest.mark.parametrize("case", list(STORED))
async def test_a_nul_in_stored_text_is_stored_as_the_replacement_character_and_blocks_nothing(
    case: str, served: Served, admin: dict[str, str], clean_database: AsyncEngine, fast_path: bool
) -> None:
    path, body, answer, prompt_text = STORED[case]
    client = await greet(served, admin, fast_path, model=say(answer), store_io=True)

    first = await client.post(path, json=body, headers=admin)
    assert first.status_code == 200, first.text
    await ok(await client.post(COMPLETE, json={"variables": {"name": "fine"}}, headers=admin))
    await ok(await client.get("/v1/usage", headers=admin))  # flushes the buffer

    recorded = await rows(clean_database, "SELECT prompt_text, completion_text FROM completions ORDER BY id")
    assert len(recorded) == 2  # the second was held back behind the first, for good
    assert all("\x00" not in (row["prompt_text"] or "") + (row["completion_text"] or "") for row in recorded)
    assert recorded[0]["completion_text"] == answer.replace("\x00", "\ufffd")
    if prompt_text is not None:
        assert recorded[0]["prompt_text"] == prompt_text
    else:
        assert "x\ufffd" in recorded[0]["prompt_text"]
