"""A completion backend process killed under load: fast failures, the breaker, the fallback, recovery.

``tests/completions/test_resilience.py`` covers each failure mode against a
backend that stays up (refused connections, timeouts, resets, the breaker's
probe, fallbacks); this test kills a real backend process in the middle of a
load and of a stream, and starts it again.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.faults.processes import (
    BackendProcess,
    Load,
    PrivatePostgres,
    RegistryProcess,
    admin_headers,
    publish_completion_prompt,
    record_figures,
    registry_env,
    wait_until,
)

BREAKER_FAILURES = 3
DIRECT_CLIENTS, GUARDED_CLIENTS = 2, 1
REQUEST = {"variables": {"name": "Ada"}}


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[BackendProcess, BackendProcess]]:
    main, spare = BackendProcess(), BackendProcess()
    main.start()
    spare.start()
    try:
        yield main, spare
    finally:
        main.kill()
        spare.kill()


@pytest.fixture(scope="module")
def registry(
    postgres: PrivatePostgres,
    backends: tuple[BackendProcess, BackendProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RegistryProcess]:
    main, spare = backends
    fast = {"connect_timeout": 1.0, "first_token_timeout": 5.0, "total_timeout": 30.0, "retry_base_delay": 0.01}
    configured = {
        "main": {
            **fast,
            "url": main.url,
            "max_retries": 1,
            "breaker_failures": BREAKER_FAILURES,
            "breaker_cooldown": 3.0,
        },
        "spare": {**fast, "url": spare.url},
    }
    env = registry_env(postgres.url, None, backends=json.dumps(configured))
    process = RegistryProcess(env, tmp_path_factory.mktemp("backend-outage") / "registry.log")
    try:
        yield process
    finally:
        process.close()


def outcome(response: httpx.Response) -> str:
    """The problem type of a failure, or whether a success came from the fallback."""
    body: dict[str, Any] = response.json()
    if response.status_code >= 400:
        return str(body.get("type", ""))
    return "fallback" if body.get("fallback_used") else "primary"


class StreamReader(threading.Thread):
    """Reads one streamed completion to its end, noting each event and when the stream ended."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.events: list[tuple[str, Any]] = []
        self.ended_at = 0.0

    def run(self) -> None:
        event = ""
        with (
            httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as http,
            http.stream("POST", "/v1/prompts/slow/complete", json={**REQUEST, "stream": True}) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    self.events.append((event, json.loads(line[6:])))
        self.ended_at = time.monotonic()


def breaker_state(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith('registry_backend_breaker_state{backend="main"}'):
            return float(line.split()[1])
    return -1.0


def test_a_killed_backend_fails_fast_opens_the_breaker_falls_back_and_recovers(
    registry: RegistryProcess, backends: tuple[BackendProcess, BackendProcess], postgres: PrivatePostgres
) -> None:
    main, _ = backends
    headers = admin_headers(postgres.url)
    with httpx.Client(base_url=registry.url, headers=headers, timeout=30) as http:
        publish_completion_prompt(http, prompt=None, config="spare-config", backend="spare")
        publish_completion_prompt(http, prompt="direct", config="direct-config", backend="main")
        publish_completion_prompt(
            http, prompt="guarded", config="guarded-config", backend="main", fallback="spare-config"
        )
        publish_completion_prompt(
            http, prompt="slow", config="slow-config", backend="main", model="trickle:0.2", max_tokens=100
        )

        def complete(prompt: str) -> Any:
            return lambda client, _: client.post(f"/v1/prompts/{prompt}/complete", json=REQUEST)

        stream = StreamReader(registry.url, headers)
        with (
            Load(complete("direct"), registry.url, headers, threads=DIRECT_CLIENTS, inspect=outcome) as direct,
            Load(complete("guarded"), registry.url, headers, threads=GUARDED_CLIENTS, inspect=outcome) as guarded,
        ):
            stream.start()
            wait_until(lambda: len(stream.events) >= 4, timeout=10, message="the slow stream did not start")
            time.sleep(0.5)
            killed_at = time.monotonic()
            main.kill()
            stream.join(10)
            time.sleep(max(0.0, killed_at + 1.0 - time.monotonic()))
            breaker_during = breaker_state(http)  # well within the cooldown of the breaker's opening
            time.sleep(max(0.0, killed_at + 3.0 - time.monotonic()))
            restarted_at = time.monotonic()
            main.start()
            recovered_after = wait_until(
                lambda: http.post("/v1/prompts/direct/complete", json=REQUEST).status_code == 200,
                timeout=15,
                message="completions did not recover",
            )
            time.sleep(0.5)
        breaker_after = breaker_state(http)

    direct_down = direct.between(killed_at, restarted_at)
    guarded_down = guarded.between(killed_at, restarted_at)
    failures = [r for r in direct_down if r.status != 200]
    slowest_failure = max((r.ended - r.started for r in failures), default=0.0)
    figures = {
        "outage_seconds": round(restarted_at - killed_at, 1),
        "direct_requests_during_outage": len(direct_down),
        "direct_failures_by_type": dict(Counter(r.label for r in direct.results if r.status != 200)),
        "slowest_failure_ms": round(slowest_failure * 1000),
        "guarded_requests_during_outage": len(guarded_down),
        "guarded_served_by_fallback": sum(1 for r in guarded_down if r.label == "fallback"),
        "guarded_errors": sum(1 for r in guarded.results if r.status != 200),
        "stream_ended_after_kill_ms": round((stream.ended_at - killed_at) * 1000),
        "breaker_state_during": breaker_during,
        "recovered_after_restart_s": round(recovered_after, 2),
    }
    record_figures("test_backend_outage", figures)

    names = [name for name, _ in stream.events]
    assert names[0] == "metadata", names
    assert names[-1] == "error", names
    assert stream.events[-1][1]["type"] == "/problems/upstream_unavailable"
    assert stream.ended_at > 0, "the stream ended with the backend (within the 10 s join)"
    assert len(direct_down) > 10
    failure_types = {r.label for r in direct.results if r.status != 200}
    assert failure_types <= {"/problems/upstream_unavailable", "/problems/circuit_open"}
    assert any(r.label == "/problems/circuit_open" for r in failures)
    # Failing fast, counted rather than timed: once the breaker opens, requests are refused without
    # reaching the dead backend. Only those in flight when it opened, and one probe, may still try it.
    reached_dead_backend = sum(1 for r in failures if r.label == "/problems/upstream_unavailable")
    assert reached_dead_backend <= BREAKER_FAILURES + DIRECT_CLIENTS + GUARDED_CLIENTS + 1, figures
    assert all(r.status in (200, 502, 503) for r in direct.results)
    assert [r for r in guarded.results if r.status != 200] == []
    assert sum(1 for r in guarded_down if r.label == "fallback") > 5
    assert breaker_during == 2.0  # open
    assert breaker_after == 0.0  # closed again after a successful probe
