"""A fallback config's own guards apply when it serves, beside the requested config's, through both doors.

Config ``cfg`` runs on ``flaky``, whose stand-in model answers 503 to everything (no retries), so every request
moves to its fallback ``spare`` on ``fault``. What the fallback's backend received is read off the stand-in.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.guards.report import count_outcomes
from tests.completions.conftest import RegistryFactory, backend, parse_sse, unique
from tests.completions.fault_server import CHAT, FaultServer, say
from tests.guards.conftest import config_version, ok, prompt_on, records

QUESTION = {"question": "mail jane.doe@example.com please"}
ANSWER = "Sure, I wrote to bob@example.org for you."


async def requests(client: httpx.AsyncClient, headers: dict[str, str]) -> list[tuple[int, str]]:
    """The same request through ``/complete`` and the OpenAI door, whole and streamed: (status, answer or body)."""
    ours = {"variables": QUESTION}
    door = {"model": "prompt:ask", "variables": QUESTION}
    found = []
    for path, body in (("/v1/prompts/ask/complete", ours), ("/v1/chat/completions", door)):
        whole = await client.post(path, json=body, headers=headers)
        if whole.status_code != 200:
            found.append((whole.status_code, whole.text))
        elif path == "/v1/chat/completions":
            found.append((200, whole.json()["choices"][0]["message"]["content"]))
        else:
            found.append((200, whole.json()["text"]))
        streamed = await client.post(path, json={**body, "stream": True}, headers=headers)
        if streamed.status_code != 200:
            found.append((streamed.status_code, streamed.text))
        elif path == "/v1/chat/completions":
            chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
            found.append((200, "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])))
        else:
            found.append((200, "".join(data["text"] for name, data in parse_sse(streamed.text) if name == "delta")))
    return found


async def with_fallback(
    registry: RegistryFactory,
    headers: dict[str, str],
    fault: FaultServer,
    *,
    guards: list[dict[str, Any]],
    fallback_guards: list[dict[str, Any]],
) -> tuple[httpx.AsyncClient, str, str]:
    """Prompt ``ask`` on ``cfg`` (``guards``) falling back to ``spare`` (``fallback_guards``), the exact cache on;
    the client and the two stand-in models."""
    url = fault.url  # type: ignore[attr-defined]
    client = await registry(
        {"fault": backend(url), "flaky": backend(url, max_retries=0, breaker_failures=100)},
        completion_cache_ttl_seconds=60,
    )
    failing, spare = unique("status:503:all"), unique(say(ANSWER))
    params = {"max_tokens": 50, "temperature": 0}  # deterministic: the exact cache would keep the answer
    await config_version(
        client, headers, "spare", {"backend": "fault", "model": spare, "params": params, "guards": fallback_guards}
    )
    body = {"backend": "flaky", "model": failing, "params": params, "guards": guards, "fallback": {"name": "spare"}}
    number = await config_version(client, headers, "cfg", body)
    await prompt_on(client, headers, "ask", "cfg", number, "Answer {{ question }}")
    await ok(await client.patch("/v1/prompts/ask", json={"store_io": True}, headers=headers))
    return client, failing, spare


def acted(record: dict[str, Any]) -> set[tuple[str, str | None, str, str]]:
    return {(o["guard"], o.get("config"), o["stage"], o["outcome"]) for o in record["guard_outcomes"] or []}


async def test_the_fallbacks_guards_redact_what_it_receives_and_its_answer_beside_the_requested_configs(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    # Both configs have a guard named "pii": the record tells the fallback's by its config.
    flag = {"name": "pii", "kind": "pii", "on": "both", "action": "flag"}
    redact_in = {"name": "pii", "kind": "pii", "action": "redact"}
    redact_out = {"name": "pii-out", "kind": "pii", "on": "output", "action": "redact"}
    client, failing, spare = await with_fallback(
        registry, admin, fault, guards=[flag], fallback_guards=[redact_in, redact_out]
    )

    answers = await requests(client, admin)

    assert answers == [(200, "Sure, I wrote to [EMAIL] for you.")] * 4
    sent = [seen.payload["messages"] for seen in fault.seen(spare, CHAT)]
    # Every request reached the fallback (its answers are never cached), each with the address masked.
    assert sent == [[{"role": "user", "content": "Answer mail [EMAIL] please"}]] * 4
    assert len(fault.seen(failing, CHAT)) == 4  # the requested config's own guard only flags
    found = [r for r in await records(client, admin, admin_engine) if r["prompt"] == "ask"]
    assert [(r["status"], r["fallback_used"], r["config"]) for r in found] == [("ok", True, "spare")] * 4
    assert [acted(r) for r in found] == [
        {
            ("pii", None, "input", "flagged"),
            ("pii", "spare", "input", "redacted"),
            ("pii", None, "output", "flagged"),
            ("pii-out", "spare", "output", "redacted"),
        }
    ] * 4


@pytest.mark.parametrize("own_guards", [False, True], ids=["requested-has-none", "requested-has-its-own"])
async def test_a_fallback_guards_block_leaves_the_request_unsent_and_reports_the_first_failure(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine, own_guards: bool
) -> None:
    block = {"name": "no-mail", "kind": "pii", "detectors": ["email"]}
    guards = [{"name": "no-mail", "kind": "deny_patterns", "patterns": ["forbidden"]}] if own_guards else []
    client, failing, spare = await with_fallback(registry, admin, fault, guards=guards, fallback_guards=[block])

    answers = await requests(client, admin)

    assert [status for status, _ in answers] == [502] * 4, answers
    assert all("upstream_unavailable" in body and "jane" not in body for _, body in answers)
    assert fault.seen(spare) == []  # never sent to the fallback, not even to count its tokens
    assert len(fault.seen(failing, CHAT)) == 4
    found = [r for r in await records(client, admin, admin_engine) if r["prompt"] == "ask"]
    assert [(r["status"], r["error_type"], r["fallback_used"]) for r in found] == [
        ("error", "upstream_unavailable", False)
    ] * 4
    blocked = ("no-mail", {("no-mail", "spare", "input", "blocked")})  # the fallback's guard, though a name is shared
    assert [(r["guard_blocked"], acted(r)) for r in found] == [blocked] * 4


def test_the_consoles_guard_counts_put_a_fallbacks_guard_under_its_own_config() -> None:
    # A completion recorded under the requested config (its fallback's guard blocked it) counts that guard under
    # the fallback, not under the requested config's guard of the same name.
    outcomes = [{"guard": "pii", "outcome": "flagged"}, {"guard": "pii", "config": "spare", "outcome": "blocked"}]
    rows = [("cfg", outcomes)]

    counted = {(c.config, c.guard): c.counts for c in count_outcomes(rows)}

    assert (counted[("cfg", "pii")]["flagged"], counted[("cfg", "pii")]["blocked"]) == (1, 0)
    assert counted[("spare", "pii")]["blocked"] == 1
