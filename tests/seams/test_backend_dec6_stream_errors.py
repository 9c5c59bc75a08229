"""A stream the backend breaks after its first token, through both completion doors: what the caller sees, what
is logged and what is recorded are the same whichever door it came through."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.lib import errors as problem_errors
from tests.completions.conftest import (  # noqa: F401 - registry: a fixture
    RegistryFactory,
    backend,
    parse_sse,
    publish,
    registry,
    unique,
    usage_rows,
)
from tests.completions.fault_server import FaultServer


class ProblemLog:
    """What ``registry.lib.errors`` logs at ERROR: the server's failures, each with its path."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.entries.append({"event": event, **fields})


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "litestar"])
async def test_a_stream_broken_after_its_first_token_is_logged_and_recorded_alike_through_both_doors(
    registry: RegistryFactory,  # noqa: F811
    admin: dict[str, str],
    fault: FaultServer,
    admin_engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    fast_path: bool,
) -> None:
    url = fault.url  # type: ignore[attr-defined]
    client = await registry({"fault": backend(url, max_retries=0)}, fast_path=fast_path)
    await publish(client, admin, backend="fault", model=unique("reset-after:2"), max_context_tokens=4096)
    log = ProblemLog()
    monkeypatch.setattr(problem_errors, "logger", log)

    body = {"variables": {"name": "Ada"}, "stream": True}
    async with client.stream("POST", "/v1/prompts/greet/complete", json=body, headers=admin) as response:
        ours = parse_sse("".join([part async for part in response.aiter_text()]))
    door = {"model": "prompt:greet", "variables": {"name": "Ada"}, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=door, headers=admin) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    openai_error = json.loads(lines[-1][6:])["error"]["problem"]

    assert ours[-1][0] == "error"
    assert ours[-1][1]["type"] == openai_error["type"] == "/problems/upstream_unavailable"
    # Before, only /complete's error event was logged: the request id the OpenAI door's caller got was in no log.
    assert [(entry["event"], entry["error_type"], entry["path"]) for entry in log.entries] == [
        ("request failed", "upstream_unavailable", "/v1/prompts/greet/complete"),
        ("request failed", "upstream_unavailable", "/v1/chat/completions"),
    ]
    recorded = await usage_rows(client, admin, admin_engine)
    assert [(r["status"], r["error_type"], r["output_tokens"], r["fallback_used"]) for r in recorded] == [
        ("error", "upstream_unavailable", 2, False)
    ] * 2
