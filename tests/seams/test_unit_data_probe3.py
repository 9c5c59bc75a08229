"""A unit's data as the OpenAI door and ``/complete`` leave it, read back by ``GET /v1/units/{unit}``."""

from __future__ import annotations

import httpx
import pytest

from tests.completions.conftest import RegistryFactory, backend, registry, unique  # noqa: F401 - registry: fixture
from tests.completions.fault_server import FaultServer, say
from tests.guards.conftest import config_version, prompt_on

CHAT = "/v1/chat/completions"


async def asked(registry: RegistryFactory, fault: FaultServer, admin: dict[str, str]) -> httpx.AsyncClient:  # noqa: F811
    """Prompt ``ask`` (texts stored) on the stand-in, its records written only when something flushes them."""
    client = await registry(
        {"fault": backend(fault.url)}, completion_cache_ttl_seconds=60, completion_usage_flush_seconds=3600.0
    )
    body = {"backend": "fault", "model": unique(say("Hi there.")), "params": {"max_tokens": 50, "temperature": 0}}
    number = await config_version(client, admin, "cfg", body)
    await prompt_on(client, admin, "ask", "cfg", number, "Answer {{ question }}")
    assert (await client.patch("/v1/prompts/ask", json={"store_io": True}, headers=admin)).status_code == 200
    return client


@pytest.mark.parametrize("door", ["openai", "complete"])
async def test_a_units_completions_not_yet_written_are_part_of_its_data_at_once(
    registry: RegistryFactory,  # noqa: F811
    fault: FaultServer,
    admin: dict[str, str],
    door: str,
) -> None:
    client = await asked(registry, fault, admin)
    if door == "openai":
        body = {"model": "prompt:ask", "messages": [{"role": "user", "content": "hello"}], "user": "alice"}
        answer = await client.post(CHAT, json={**body, "variables": {"question": "q"}}, headers=admin)
    else:
        answer = await client.post(
            "/v1/prompts/ask/complete", json={"variables": {"question": "q"}, "unit": "alice"}, headers=admin
        )
    assert answer.status_code == 200, answer.text

    # Read before the recorder's next flush: the record is still in this process's buffer.
    shown = await client.get("/v1/units/alice", headers=admin)

    assert shown.status_code == 200, shown.text
    completions = shown.json()["completions"]
    assert completions["count"] == 1
    [stored] = completions["stored_texts"]
    assert stored["completion_text"] == "Hi there."
    erased = await client.delete("/v1/units/alice", headers=admin)
    assert erased.json()["completions"] == completions["count"]  # what the access request showed, erased
