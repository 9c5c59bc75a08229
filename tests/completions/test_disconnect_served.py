"""A caller that goes away, under the server ``registry serve`` runs (granian by default).

The other completion tests serve the app with uvicorn. A handler learns that its
caller left only if the ASGI server delivers ``http.disconnect`` to ``receive``
while the handler waits, so the default server is checked as well.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import finished, publish, unique, until, until_taken, usage_rows
from tests.completions.fault_server import CHAT, PROMPT_TOKENS, FaultServer
from tests.faults.processes import RegistryProcess, registry_env

REQUEST = {"variables": {"name": "Ada"}}


@pytest.fixture
def served(
    fault: FaultServer, database_url: str, clean_database: AsyncEngine, tmp_path: Path
) -> Iterator[RegistryProcess]:
    """``registry serve`` with its default server, calling the fault server (slow limits: only a disconnect ends)."""
    url = fault.url  # type: ignore[attr-defined]
    backends = {"fault": {"url": url, "first_token_timeout": 120, "total_timeout": 120}}
    process = RegistryProcess(registry_env(database_url, None, backends=json.dumps(backends)), tmp_path / "log")
    try:
        yield process
    finally:
        process.close()


async def test_under_the_default_server_a_caller_leaving_aborts_the_backend_in_both_modes(
    served: RegistryProcess, fault: FaultServer, admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    whole, streamed = unique("stall-after:3"), unique("stall-after:0")
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        await publish(client, admin, backend="fault", model=whole, prompt="whole", config="c1", max_context_tokens=4096)
        await publish(
            client, admin, backend="fault", model=streamed, prompt="streamed", config="c2", max_context_tokens=4096
        )

        async def first_token_read() -> bool:  # the three tokens come in one write: read with the first
            metrics = (await client.get("/metrics")).text
            return 'registry_upstream_ttft_seconds_count{backend="fault"} 1.0' in metrics

        answer = asyncio.create_task(client.post("/v1/prompts/whole/complete", json=REQUEST, headers=admin))
        await until(first_token_read, "the registry to read the first token")
        answer.cancel()
        whole_seen = await finished(fault, whole)

        async def requested() -> bool:
            return len(fault.seen(streamed, CHAT)) == 1

        body = {**REQUEST, "stream": True}
        stream = asyncio.create_task(client.post("/v1/prompts/streamed/complete", json=body, headers=admin))
        await until(requested, "the registry to call the backend")
        await until_taken(client)
        stream.cancel()
        streamed_seen = await finished(fault, streamed)

        async def both_recorded() -> bool:  # the stream left before its first token waits for its prompt's count
            return len(await usage_rows(client, admin, admin_engine)) == 2

        await until(both_recorded, "both completions to be recorded")
        rows = await usage_rows(client, admin, admin_engine)

    assert whole_seen.disconnected
    assert streamed_seen.disconnected
    assert [(r["status"], r["stream"], r["input_tokens"], r["output_tokens"]) for r in rows] == [
        ("cancelled", False, PROMPT_TOKENS, 3),
        ("cancelled", True, PROMPT_TOKENS, 0),  # no usage came, but the backend read the prompt
    ]
