"""A model guard's classifier keeps text only if the guarded request's prompt allows it too.

Its rendered prompt holds the text it judges, so a classifier prompt with ``store_io`` on, guarding a prompt with
``store_io`` off, keeps none of it: no stored input or output in its usage record, nothing in the exact cache.
"""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import unique
from tests.completions.fault_server import CHAT, FaultServer
from tests.guards.conftest import guarded, ok
from tests.guards.test_classifier_unit_data import (  # the exact cache on, in Redis and in the process
    COMPLETE,
    MODERATION,
    client,
    deterministic_classifier,
    stored_texts,
)

__all__ = ["client"]


async def ask_twice(client: httpx.AsyncClient, headers: dict[str, str], *, store_io: bool) -> str:
    """Prompt ``ask`` (``store_io`` as given) guarded by the classifier, asked the same question twice; the secret."""
    await guarded(client, headers, model=unique("ok"), guards=[MODERATION])
    await ok(await client.patch("/v1/prompts/ask", json={"store_io": store_io}, headers=headers))
    secret = f"Zanzibar{uuid.uuid4().hex[:8]}"
    question = {"variables": {"question": f"where is {secret}"}, "unit": f"ada-{uuid.uuid4().hex[:8]}"}
    for _ in range(2):
        await ok(await client.post(COMPLETE, json=question, headers=headers))
    assert (await client.get("/v1/usage", headers=headers)).status_code == 200  # writes the buffered records
    return secret


async def test_a_classifier_keeps_no_text_of_a_request_whose_prompt_keeps_none(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    judge = await deterministic_classifier(client, admin)  # the classifier prompt has store_io on

    secret = await ask_twice(client, admin, store_io=False)

    rows = await stored_texts(admin_engine)
    assert [row[0] for row in rows] == ["moderator", "ask", "moderator", "ask"]
    assert [row[3:] for row in rows] == [(None, None)] * 4  # neither the guarded request's nor its classifier's
    assert secret not in str(rows)
    assert len(fault.seen(judge, CHAT)) == 2  # nothing was cached: the second check asked the classifier again


async def test_a_classifier_keeps_text_as_before_when_both_prompts_keep_it(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    judge = await deterministic_classifier(client, admin)

    secret = await ask_twice(client, admin, store_io=True)

    rows = await stored_texts(admin_engine)
    assert [row[0] for row in rows] == ["moderator", "ask", "moderator", "ask"]
    assert all(secret in row[3] and row[4] for row in rows)  # each record keeps its prompt and its answer
    assert len(fault.seen(judge, CHAT)) == 1  # the second check was answered from the exact cache
