"""The embedded default (SQLite, a pool of one connection, no Redis) serves every route the README shows.

A handler that opens a second session while its request's session holds the only connection
waits for the pool until it gives up and answers 503. The pool timeout here is short, so such a
wait fails the test at once instead of after half a minute.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.completions.conftest import backend, fault  # noqa: F401  (the fault server fixture)
from tests.completions.fault_server import FaultServer
from tests.conftest import AppClient
from tests.embedded import embedded_settings, serve_embedded

CHAT = {
    "kind": "chat",
    "messages": [
        {"role": "system", "content": "Summarize the ticket in at most {{ max_words }} words."},
        {"role": "user", "content": "{{ ticket }}"},
    ],
    "input_schema": {
        "properties": {"ticket": {"type": "string", "maxLength": 20000}, "max_words": {"type": "integer"}},
        "required": ["ticket", "max_words"],
    },
    "config": {"name": "small", "version": 1},
}
SECOND = {**CHAT, "messages": [*CHAT["messages"], {"role": "user", "content": "Name the product area first."}]}
VARIABLES = {"ticket": "The export button does nothing.", "max_words": 20}
PROMPT = "/v1/prompts/support%2Fsummarize"
NOW = datetime.now(UTC).isoformat()


@pytest.fixture
async def embedded(tmp_path: Path, fault: FaultServer) -> AsyncIterator[tuple[AppClient, dict[str, str]]]:  # noqa: F811
    settings = embedded_settings(
        tmp_path,
        database_pool_timeout=0.1,
        backends={"local": backend(fault.url)},  # type: ignore[attr-defined]
        webhook_dispatch_interval_seconds=3600,
    )
    async with serve_embedded(settings) as served:
        yield served


class Walk:
    """Calls routes in order and remembers every answer that was a server error."""

    def __init__(self, client: AppClient, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = headers
        self.failures: list[str] = []

    async def __call__(self, method: str, path: str, expected: int = 200, **kwargs: Any) -> Any:
        response: httpx.Response = await self.client.request(method, path, headers=self.headers, **kwargs)
        if response.status_code != expected:
            self.failures.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response.json() if "json" in response.headers.get("content-type", "") else response.text


async def test_every_route_of_the_readme_answers_on_the_embedded_default(
    embedded: tuple[AppClient, dict[str, str]],
) -> None:
    client, admin = embedded
    call = Walk(client, admin)
    # Five minutes with curl.
    await call("POST", "/v1/configs", 201, json={"name": "small"})
    await call(
        "POST",
        "/v1/configs/small/versions",
        201,
        json={"backend": "local", "model": "ok", "params": {"max_tokens": 8}, "input_price_per_mtok": 0.15},
    )
    await call("POST", "/v1/configs/small/versions/1/promote", json={"to": "production", "expected_current": None})
    await call("POST", "/v1/prompts", 201, json={"name": "support/summarize", "tags": ["support"]})
    await call("POST", f"{PROMPT}/versions", 201, json={**CHAT, "commit_message": "first cut"})
    await call("POST", f"{PROMPT}/versions/1/promote", json={"to": "production", "expected_current": None})
    await call("POST", f"{PROMPT}/render", json={"variables": VARIABLES})
    await call("POST", f"{PROMPT}/versions", 201, json=SECOND)
    await call("POST", f"{PROMPT}/versions/2/promote", json={"to": "production", "expected_current": 1})
    await call("POST", f"{PROMPT}/rollback", json={"reason": "v2 drops details"})
    await call("GET", f"{PROMPT}/history")
    await call("GET", f"{PROMPT}/diff", params={"from": 1, "to": 2})
    # The route table: prompts and configs.
    await call("GET", "/v1/prompts", params={"prefix": "support/"})
    await call("GET", PROMPT, params={"unit": "u1"})
    await call("PATCH", PROMPT, json={"description": "summaries"})
    await call("GET", f"{PROMPT}/versions", params={"state": "production"})
    await call("GET", f"{PROMPT}/versions/1")
    await call("POST", f"{PROMPT}/complete", json={"variables": VARIABLES})
    await call("POST", f"{PROMPT}/complete", json={"variables": VARIABLES, "stream": True})
    await call("GET", "/v1/configs")
    await call("GET", "/v1/configs/small")
    await call("GET", "/v1/configs/small/versions/1")
    # Metrics, experiments, events, exposures, units.
    await call("POST", "/v1/metrics", 201, json={"key": "converted", "kind": "binomial"})
    await call("GET", "/v1/metrics")
    await call("PATCH", "/v1/metrics/converted", json={"description": "bought"})
    experiment = {
        "key": "summary-test",
        "prompt": "support/summarize",
        "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
        "primary_metric": "converted",
    }
    await call("POST", "/v1/experiments", 201, json=experiment)
    await call("GET", "/v1/experiments")
    await call("PATCH", "/v1/experiments/summary-test", json={"description": "shorter"})
    await call("POST", "/v1/experiments/summary-test/start")
    await call("POST", f"{PROMPT}/render", json={"variables": VARIABLES, "unit": "u1"})
    await call(
        "POST",
        "/v1/events",
        json={"events": [{"unit": "u1", "metric": "converted", "idempotency_key": "k1", "timestamp": NOW}]},
    )
    await call(
        "POST",
        "/v1/exposures",
        202,
        json={"exposures": [{"experiment": "summary-test", "unit": "u2", "variant": "control"}]},
    )
    await call("GET", "/v1/experiments/summary-test/results")
    await call("GET", "/v1/experiments/summary-test/export", params={"format": "csv"})
    await call("GET", "/v1/units/u1")
    await call("DELETE", "/v1/units/u1")
    await call("POST", "/v1/experiments/summary-test/stop", json={"reason": "done"})
    await call("GET", "/v1/usage", params={"group_by": "prompt"})
    # Keys, budgets, rate limits.
    created = await call("POST", "/v1/keys", 201, json={"name": "app", "scopes": ["read"]})
    key_id = created["api_key"]["id"]
    await call("GET", "/v1/keys")
    await call("PUT", f"/v1/keys/{key_id}/budget", json={"monthly_tokens": 1000})
    await call("GET", f"/v1/keys/{key_id}/budget")
    await call("PUT", f"/v1/keys/{key_id}/rate-limit", json={"per_minute": 100})
    await call("DELETE", f"/v1/keys/{key_id}")
    # Webhooks and the audit log.
    hook = await call("POST", "/v1/webhooks", 201, json={"url": "https://ci.example.com/hooks", "events": ["prompt.*"]})
    hook_id = hook["webhook"]["id"]
    await call("GET", "/v1/webhooks")
    await call("GET", f"/v1/webhooks/{hook_id}/deliveries")
    await call("POST", f"/v1/webhooks/{hook_id}/ping", 202)
    await call("DELETE", f"/v1/webhooks/{hook_id}", 204)
    await call("GET", "/v1/audit", params={"resource_type": "api_key"})
    # Operations.
    for path in ("/health", "/ready", "/metrics", "/schema/openapi.json", "/problems/over_budget"):
        await call("GET", path)

    assert call.failures == [], "\n".join(call.failures)
