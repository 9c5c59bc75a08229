"""A completion's deadline (``total_timeout``) after its first token: one timer for the stream, not one per read.

At the deadline the connection to the backend closes (vLLM aborts the request), the caller gets the
timeout as the stream's last event (or as the answer's status), and the tokens sent before it are
recorded and charged.
"""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import RegistryFactory, finished, unique, usage_rows
from tests.completions.fault_server import PROMPT_TOKENS, FaultServer
from tests.completions.test_cut_short import COMPLETE, REQUEST, cost, start, stream_events


async def test_a_stream_that_stalls_past_its_deadline_ends_with_a_timeout_and_is_charged_for_its_tokens(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    model = unique("stall-after:3")
    client = await start(registry, admin, fault, model, first_token_timeout=0.5, total_timeout=0.5)

    _, events = await stream_events(client, admin)
    seen = await finished(fault, model)

    assert [name for name, _ in events] == ["metadata", "delta", "error"]
    assert events[1][1] == {"text": "Hello from the"}
    assert events[2][1]["type"] == "/problems/upstream_timeout"
    assert "did not finish within the timeout" in events[2][1]["detail"]
    assert seen.disconnected  # the registry closed its upstream connection
    [row] = await usage_rows(client, admin, admin_engine)
    assert (row["status"], row["error_type"], row["output_tokens"]) == ("error", "upstream_timeout", 3)
    assert row["cost"] == pytest.approx(cost(PROMPT_TOKENS, 3))


async def test_a_whole_answer_that_stalls_past_its_deadline_is_a_timeout_and_is_charged_for_its_tokens(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    model = unique("stall-after:3")
    client = await start(registry, admin, fault, model, first_token_timeout=0.5, total_timeout=0.5)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 504
    assert response.json()["type"] == "/problems/upstream_timeout"
    assert (await finished(fault, model)).disconnected
    [row] = await usage_rows(client, admin, admin_engine)
    assert (row["status"], row["error_type"], row["output_tokens"]) == ("error", "upstream_timeout", 3)
