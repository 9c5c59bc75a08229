"""Redis stopped under load: two real replicas keep serving, and invalidations flow again when it returns."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from tests.conftest import free_port
from tests.faults.processes import (
    Load,
    PrivatePostgres,
    PrivateRedis,
    RegistryProcess,
    admin_headers,
    make_prompt,
    ok,
    promote_to_production,
    record_figures,
    registry_env,
    wait_until,
)

OUTAGE_SECONDS = 4.0


@pytest.fixture(scope="module")
def replicas(
    postgres: PrivatePostgres, redis_server: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    logs = tmp_path_factory.mktemp("redis-outage")
    env = registry_env(postgres.url, redis_server.url)
    first = RegistryProcess(env, logs / "first.log")
    second = RegistryProcess({**env, "REGISTRY_PORT": str(free_port()), "REGISTRY_ROLE": "api"}, logs / "second.log")
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def subscribers(redis_server: PrivateRedis, channel: str) -> int:
    """How many processes listen on the change channel (PUBSUB NUMSUB), or -1 while Redis is down."""
    try:
        with socket.create_connection(("127.0.0.1", redis_server.port), timeout=0.5) as sock:
            sock.sendall(f"PUBSUB NUMSUB {channel}\r\n".encode())
            reply = sock.recv(256).split(b"\r\n")  # *2, $len, channel, :count
            return int(reply[3][1:])
    except (OSError, IndexError, ValueError):
        return -1


def rendered_version(http: httpx.Client) -> int:
    return int(ok(http.post("/v1/prompts/greet/render", json={"variables": {"x": "y"}}))["version"])


def test_renders_writes_and_events_keep_succeeding_while_redis_is_down_and_invalidations_resume(
    replicas: tuple[RegistryProcess, RegistryProcess], redis_server: PrivateRedis, postgres: PrivatePostgres
) -> None:
    first, second = replicas
    channel = f"{first.env['REGISTRY_REDIS_KEY_PREFIX']}changes"
    headers = admin_headers(postgres.url)
    with (
        httpx.Client(base_url=first.url, headers=headers, timeout=10) as one,
        httpx.Client(base_url=second.url, headers=headers, timeout=10) as two,
    ):
        make_prompt(one, "greet", versions=3)
        make_prompt(one, "notes", versions=1)
        ok(one.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}), 201)
        assert rendered_version(two) == 1
        wait_until(lambda: subscribers(redis_server, channel) == 2, timeout=10, message="a replica did not subscribe")

        def render(http: httpx.Client, _: int) -> httpx.Response:
            return http.post("/v1/prompts/greet/render", json={"variables": {"x": "y"}})

        def write_version(http: httpx.Client, _: int) -> httpx.Response:
            return http.post("/v1/prompts/notes/versions", json={"kind": "text", "template": "note {{ x }}"})

        def send_event(http: httpx.Client, number: int) -> httpx.Response:
            event = {
                "unit": f"u{number}",
                "metric": "converted",
                "idempotency_key": f"redis-outage-{number}",
                "timestamp": datetime.now(UTC).isoformat(),
            }
            return http.post("/v1/events", json={"events": [event]})

        with (
            Load(render, first.url, headers, threads=2) as renders_one,
            Load(render, second.url, headers, threads=2) as renders_two,
            Load(write_version, first.url, headers, threads=1) as writes,
            Load(send_event, second.url, headers, threads=1) as events,
        ):
            time.sleep(1.0)
            outage_started = time.monotonic()
            redis_server.stop()
            time.sleep(0.5)
            promoted_during_outage = promote_to_production(one, "greet", 2, expected_current=1)
            time.sleep(OUTAGE_SECONDS - 0.5)
            outage_ended = time.monotonic()
            redis_server.start()
            resubscribed_after = wait_until(
                lambda: subscribers(redis_server, channel) == 2, timeout=15, message="the replicas did not resubscribe"
            )
            caught_up_after = wait_until(
                lambda: rendered_version(two) == 2, timeout=10, message="the other replica never saw version 2"
            )
            time.sleep(1.0)
        loads = [renders_one, renders_two, writes, events]
        all_results = [r for load in loads for r in load.results]
        during = [r for load in loads for r in load.between(outage_started, outage_ended)]
        renders_during = [r for load in (renders_one, renders_two) for r in load.between(outage_started, outage_ended)]

        # Invalidations flow again: a promotion now reaches the other replica at once, though its cache
        # lifetime is 300 s, so only the change message can make it re-read.
        rendered_version(two)
        promoted_at = time.monotonic()
        ok(promote_to_production(one, "greet", 3, expected_current=2))
        # Seeing version 3 at all is the behaviour (only the change message can do it); the time is a figure.
        wait_until(lambda: rendered_version(two) == 3, timeout=60, message="no invalidation arrived")
        propagation = time.monotonic() - promoted_at

    errors = [r for r in all_results if not 200 <= r.status < 300]
    figures = {
        "outage_seconds": round(outage_ended - outage_started, 1),
        "requests_during_outage": len(during),
        "renders_during_outage": len(renders_during),
        "writes_during_outage": len(writes.between(outage_started, outage_ended)),
        "events_during_outage": len(events.between(outage_started, outage_ended)),
        "requests_total": len(all_results),
        "errors": len(errors),
        "resubscribed_after_s": round(resubscribed_after, 2),
        "outage_change_seen_after_s": round(resubscribed_after + caught_up_after, 2),
        "invalidation_after_recovery_ms": round(propagation * 1000),
    }
    record_figures("test_redis_outage", figures)
    assert promoted_during_outage.status_code == 200, promoted_during_outage.text
    assert errors == [], errors[:5]
    assert len(renders_during) > 20
    assert writes.between(outage_started, outage_ended)
    assert events.between(outage_started, outage_ended)
