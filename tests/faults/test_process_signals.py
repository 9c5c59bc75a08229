"""The registry killed (SIGKILL) under write load, and stopped (SIGTERM) with requests and buffers in flight."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.faults.processes import (
    BackendProcess,
    PrivatePostgres,
    RegistryProcess,
    admin_headers,
    make_prompt,
    ok,
    promote_to_production,
    publish_completion_prompt,
    record_figures,
    registry_env,
    wait_until,
)

PROMPTS = [f"kill-{n}" for n in range(4)]
CLIENTS = 6
EXPOSURE_FLUSH_SECONDS = 1.5  # long enough that a kill usually lands with some exposures unwritten


def rows(url: str, sql: str) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                return list((await connection.execute(text(sql))).all())
        finally:
            await engine.dispose()

    return asyncio.run(run())


def start_experiment(http: httpx.Client, prompt: str) -> None:
    """An experiment on versions 1 and 2 of ``prompt`` (the module's database may hold the metric already)."""
    ok(http.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}), 201, 409)
    experiment = {
        "key": f"exp-{prompt}",
        "prompt": prompt,
        "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
        "primary_metric": "converted",
    }
    ok(http.post("/v1/experiments", json=experiment))
    ok(http.post(f"/v1/experiments/exp-{prompt}/start"))
    wait_until(
        lambda: (
            ok(http.post(f"/v1/prompts/{prompt}/render", json={"variables": {"x": "y"}, "unit": "warm"})).get(
                "experiment"
            )
            is not None
        ),
        timeout=10,
        message="the experiment did not start routing",
    )


# --------------------------------------------------------------------------- SIGKILL


@dataclass
class Acknowledged:
    """What the registry answered 2xx to, per client."""

    versions: list[tuple[str, int]] = field(default_factory=list)
    promotions: list[tuple[str, int]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    exposures: list[tuple[str, float]] = field(default_factory=list)  # unit, when the render answered
    attempts: int = 0


def write_client(url: str, headers: dict[str, str], number: int, stop: threading.Event, acked: Acknowledged) -> None:
    """Creates versions, promotes and posts events at random until the server dies."""
    chooser = random.Random(number)
    with httpx.Client(base_url=url, headers=headers, timeout=5) as http:
        count = 0
        while not stop.is_set():
            prompt = chooser.choice(PROMPTS)
            operation = chooser.choice(["version", "promote", "events"])
            count += 1
            acked.attempts += 1
            try:
                if operation == "version":
                    body = {"kind": "text", "template": f"c{number} n{count} {{{{ x }}}}"}
                    response = http.post(f"/v1/prompts/{prompt}/versions", json=body)
                    if response.status_code == 201:
                        acked.versions.append((prompt, int(response.json()["version"])))
                elif operation == "promote":
                    labels = http.get(f"/v1/prompts/{prompt}").json()["labels"]
                    target = chooser.randint(1, labels["latest"])
                    response = promote_to_production(http, prompt, target, expected_current=labels["production"])
                    if response.status_code == 200 and response.json()["changed"]:  # else it was production already
                        acked.promotions.append((prompt, target))
                else:
                    now = datetime.now(UTC).isoformat()
                    keys = [f"c{number}-{count}-{i}" for i in range(5)]
                    batch = [{"unit": k, "metric": "converted", "idempotency_key": k, "timestamp": now} for k in keys]
                    response = http.post("/v1/events", json={"events": batch})
                    if response.status_code == 200:
                        acked.events += keys
            except (httpx.TransportError, KeyError, ValueError):
                if stop.is_set():
                    return
                time.sleep(0.05)


def exposure_client(url: str, headers: dict[str, str], stop: threading.Event, acked: Acknowledged) -> None:
    """Renders for new units in a running experiment: each records a first exposure in the buffer."""
    with httpx.Client(base_url=url, headers=headers, timeout=5) as http:
        count = 0
        while not stop.is_set():
            unit = f"unit-{count}"
            count += 1
            try:
                response = http.post(f"/v1/prompts/{PROMPTS[0]}/render", json={"variables": {"x": "y"}, "unit": unit})
            except httpx.TransportError:
                return
            if response.status_code == 200 and response.json()["experiment"]["in_experiment"]:
                acked.exposures.append((unit, time.monotonic()))
            time.sleep(0.01)


def replay_is_consistent(transitions: list[Any], states: dict[int, str]) -> bool:
    """Replaying the history from draft gives each version's current state, and no step skips a state."""
    replayed: dict[int, str] = {}
    for version, from_state, to_state in transitions:
        if replayed.get(version, "draft") != from_state:
            return False
        replayed[version] = to_state
    return all(replayed.get(version, "draft") == state for version, state in states.items())


def test_sigkill_under_write_load_loses_nothing_acknowledged_and_exposures_only_within_the_flush_interval(
    postgres: PrivatePostgres, tmp_path: Path
) -> None:
    env = registry_env(postgres.url, None, experiment_exposure_flush_seconds=str(EXPOSURE_FLUSH_SECONDS))
    server = RegistryProcess(env, tmp_path / "first.log")
    headers = admin_headers(postgres.url)
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
            for prompt in PROMPTS:
                make_prompt(http, prompt, versions=2)
            start_experiment(http, PROMPTS[0])

        stop = threading.Event()
        acked = [Acknowledged() for _ in range(CLIENTS + 1)]
        clients = [
            threading.Thread(target=write_client, args=(server.url, headers, n, stop, acked[n]), daemon=True)
            for n in range(CLIENTS)
        ]
        clients.append(
            threading.Thread(target=exposure_client, args=(server.url, headers, stop, acked[CLIENTS]), daemon=True)
        )
        for client in clients:
            client.start()
        # Kill once enough is acknowledged, and some exposures flushed, for the checks below to mean
        # something: counted, so a slow machine waits longer instead of failing them.
        wait_until(
            lambda: enough_acknowledged(acked) and rows(postgres.url, "SELECT count(*) FROM exposures")[0][0] > 0,
            timeout=120,
            interval=0.25,
            message="the write load was not acknowledged",
        )
        killed_at = time.monotonic()
        server.kill()
        stop.set()
        for client in clients:
            client.join(10)
    finally:
        server.close()

    restarted = RegistryProcess(env, tmp_path / "second.log")  # the same database, as a restarted container
    try:
        with httpx.Client(base_url=restarted.url, headers=headers, timeout=10) as http:
            assert http.get("/ready").status_code == 200
        versions = {(p, n) for p, n in rows(postgres.url, _VERSIONS)}
        promotions = Counter((p, n) for p, n in rows(postgres.url, _PROMOTIONS))
        events = {key for (key,) in rows(postgres.url, "SELECT idempotency_key FROM outcome_events")}
        exposed = {unit for (unit,) in rows(postgres.url, "SELECT unit FROM exposures")}
        states = rows(postgres.url, _STATES)
        history = rows(postgres.url, _HISTORY)
    finally:
        restarted.close()

    acked_versions = [v for a in acked for v in a.versions]
    acked_promotions = Counter(p for a in acked for p in a.promotions)
    acked_events = [e for a in acked for e in a.events]
    acked_exposures = acked[CLIENTS].exposures
    lost_exposures = [(unit, killed_at - at) for unit, at in acked_exposures if unit not in exposed]
    figures = {
        "write_requests": sum(a.attempts for a in acked[:CLIENTS]),
        "acknowledged_versions": len(acked_versions),
        "acknowledged_promotions": sum(acked_promotions.values()),
        "acknowledged_events": len(acked_events),
        "lost_versions": len(set(acked_versions) - versions),
        "lost_promotions": sum((acked_promotions - promotions).values()),
        "lost_events": len(set(acked_events) - events),
        "exposures_rendered": len(acked_exposures),
        "exposures_lost": len(lost_exposures),
        "oldest_lost_exposure_ms_before_kill": round(max((age for _, age in lost_exposures), default=0.0) * 1000),
    }
    record_figures("test_sigkill", figures)

    assert len(acked_versions) > 10
    assert sum(acked_promotions.values()) > 5
    assert len(acked_events) > 50
    assert set(acked_versions) <= versions
    assert not acked_promotions - promotions  # every acknowledged promotion is in the history
    assert set(acked_events) <= events
    by_prompt: dict[str, dict[int, str]] = {}
    for prompt, number, state in states:
        by_prompt.setdefault(prompt, {})[number] = state
    for prompt, current in by_prompt.items():
        assert sum(1 for state in current.values() if state == "production") == 1, (prompt, current)
        chain = [(n, f, t) for p, n, f, t in history if p == prompt]
        assert replay_is_consistent(chain, current), (prompt, chain, current)
    # Exposures: a hard kill loses only those buffered since the last flush, that is the latest ones: every
    # exposure acknowledged before the last stored one is stored too (ordered, not timed).
    last_stored = max((n for n, (unit, _) in enumerate(acked_exposures) if unit in exposed), default=-1)
    assert exposed, "the buffer was flushed at least once before the kill"
    missing_before_last_stored = [unit for unit, _ in acked_exposures[: last_stored + 1] if unit not in exposed]
    assert missing_before_last_stored == []


def enough_acknowledged(acked: list[Acknowledged]) -> bool:
    return (
        sum(len(a.versions) for a in acked) > 10
        and sum(len(a.promotions) for a in acked) > 5
        and sum(len(a.events) for a in acked) > 50
    )


_VERSIONS = "SELECT p.name, v.number FROM prompt_versions v JOIN prompts p ON p.id = v.prompt_id"
_PROMOTIONS = (
    "SELECT p.name, t.version_number FROM prompt_transitions t JOIN prompts p ON p.id = t.prompt_id "
    "WHERE t.to_state = 'production'"
)
_STATES = "SELECT p.name, v.number, v.state FROM prompt_versions v JOIN prompts p ON p.id = v.prompt_id"
_HISTORY = (
    "SELECT p.name, t.version_number, t.from_state, t.to_state FROM prompt_transitions t "
    "JOIN prompts p ON p.id = t.prompt_id ORDER BY t.id"
)


# --------------------------------------------------------------------------- SIGTERM


class StreamReader(threading.Thread):
    """Reads a server-sent event stream to its end."""

    def __init__(self, url: str, headers: dict[str, str], method: str, path: str, body: Any = None) -> None:
        super().__init__(daemon=True)
        self.url, self.headers, self.method, self.path, self.body = url, headers, method, path, body
        self.events: list[tuple[str, Any]] = []
        self.lines = 0
        self.ended_at = 0.0
        self.error: str | None = None

    def run(self) -> None:
        event = ""
        try:
            with (
                httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as http,
                http.stream(self.method, self.path, json=self.body) as response,
            ):
                for line in response.iter_lines():
                    self.lines += 1
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        self.events.append((event, json.loads(line[6:])))
        except httpx.HTTPError as exc:
            self.error = repr(exc)
        self.ended_at = time.monotonic()


@pytest.fixture
def backend() -> Iterator[BackendProcess]:
    process = BackendProcess()
    process.start()
    try:
        yield process
    finally:
        process.kill()


def test_sigterm_finishes_a_streamed_completion_flushes_exposures_and_exits_with_a_change_feed_open(
    postgres: PrivatePostgres, backend: BackendProcess, tmp_path: Path
) -> None:
    backends = {"slow": {"url": backend.url, "first_token_timeout": 5.0, "total_timeout": 30.0}}
    env = registry_env(
        postgres.url,
        None,
        backends=json.dumps(backends),
        experiment_exposure_flush_seconds="3600",  # only the shutdown flush writes them
    )
    server = RegistryProcess(env, tmp_path / "registry.log")
    headers = admin_headers(postgres.url)
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
            make_prompt(http, "term", versions=2)
            start_experiment(http, "term")
            publish_completion_prompt(
                http, prompt="trickle", config="trickle-config", backend="slow", model="trickle:0.1", max_tokens=20
            )
            feed = StreamReader(server.url, headers, "GET", "/v1/changes")
            feed.start()
            units = [f"term-unit-{n}" for n in range(20)]
            for unit in units:
                ok(http.post("/v1/prompts/term/render", json={"variables": {"x": "y"}, "unit": unit}))
            completion = StreamReader(
                server.url,
                headers,
                "POST",
                "/v1/prompts/trickle/complete",
                {"variables": {"name": "Ada"}, "stream": True},
            )
            completion.start()
            wait_until(lambda: feed.lines > 0 or feed.ended_at > 0, timeout=10, message="the change feed did not open")
            wait_until(lambda: len(completion.events) >= 3, timeout=10, message="the completion did not start")
        deltas_before_sigterm = sum(1 for name, _ in completion.events if name == "delta")
        shutdown_seconds = server.terminate()
        completion.join(10)
        feed.join(10)
    finally:
        server.close()

    exposed = {unit for (unit,) in rows(postgres.url, "SELECT unit FROM exposures WHERE unit LIKE 'term-unit-%'")}
    names = [name for name, _ in completion.events]
    deltas = sum(1 for name in names if name == "delta")
    figures = {
        "shutdown_seconds": round(shutdown_seconds, 2),
        "exit_code": server.process.returncode,
        "stream_deltas_before_sigterm": deltas_before_sigterm,
        "stream_deltas_after_sigterm": deltas - deltas_before_sigterm,
        "stream_last_event": names[-1] if names else None,
        "change_feed_closed": feed.ended_at > 0,
        "exposures_recorded_before_sigterm": len(units),
        "exposures_in_database_after": len(exposed),
    }
    record_figures("test_sigterm", figures)

    assert server.process.returncode == 0, server.log()  # exited by itself on SIGTERM (terminate waits 30 s)
    assert completion.error is None, completion.error
    assert deltas_before_sigterm < 20
    assert deltas == 20  # the in-flight stream ran to its end
    assert names[-1] == "done", names
    assert feed.ended_at > 0  # the open change feed was ended, not left holding the shutdown
    assert exposed == set(units)
