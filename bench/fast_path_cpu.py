"""CPU per request of the fast path, in process: steadier than load tests on a shared machine.

Calls the ASGI app directly (no sockets, no load generator), so the numbers are
the service's own work per request: the bare route (our middleware and Litestar),
the raw bare route (our middleware only, where the fast path sits), resolve,
render, render with a new unit per request (assignment and a first exposure), and
a streamed 32-token completion against a stand-in backend (the fault server of
the tests, in its own process), and a batch of 500 outcome events through
``POST /v1/events`` (the database's own CPU is not counted). ``--profile SCENARIO``
prints a cProfile of that scenario, which is how the fast path was tuned (see
BENCHMARKS.md, "What was removed from the fast path").

Run: ``make bench-cpu`` (or ``python bench/fast_path_cpu.py``); PostgreSQL and Redis at 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    PATH,
    PROMPT,
    REDIS_URL,
    admin,
    database_url,
    fault_server,
    http_scope,
    machine,
    prepare,
    write_section,
)

SECTION = "## Fast path, CPU per request"
Call = Callable[[], Awaitable[int]]
ROUNDS = 5
EVENT_BATCH = 500
# Scenarios that cost far more per request run fewer requests per round: complete, events.
SLOWER = {"complete": 20, "events": 200}
EVENTS = f"events (batch of {EVENT_BATCH})"


def asgi_call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> Call:
    """One request straight into the ASGI app; receive says 'disconnect' once the response is sent, as servers do."""

    async def call() -> int:
        sent_headers = [*headers, (b"content-length", str(len(body)).encode())] if body else headers
        scope = http_scope(method, path.replace("%2F", "/"), path.encode(), sent_headers)
        done = asyncio.Event()
        delivered = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body"):
                done.set()

        await app(scope, receive, send)
        return status

    return call


async def publish(app: Any, secret: str) -> None:
    headers = {"Authorization": f"Bearer {secret}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=headers) as http:
        for method, path, body in [
            ("POST", "/v1/configs", {"name": "stand-in"}),
            ("POST", "/v1/configs/stand-in/versions", {
                "backend": "stand-in", "model": "trickle:0", "params": {"max_tokens": 32},
            }),
            ("POST", "/v1/prompts", {"name": PROMPT}),
            ("POST", f"/v1/prompts/{PATH}/versions", {"kind": "text", "template": "Hello {{ name }}, how can I help?"}),
            ("POST", f"/v1/prompts/{PATH}/versions", {"kind": "text", "template": "Hi {{ name }}! What do you need?"}),
            ("POST", f"/v1/prompts/{PATH}/versions/1/promote", {"to": "production", "expected_current": None}),
            ("POST", "/v1/metrics", {"key": "bench_converted", "kind": "binomial"}),
            ("POST", "/v1/experiments", {
                "key": "bench-greeting", "prompt": PROMPT, "primary_metric": "bench_converted",
                "variants": [{"key": "a", "prompt_version": 1}, {"key": "b", "prompt_version": 2}],
            }),
            ("POST", "/v1/experiments/bench-greeting/start", None),
            ("POST", "/v1/prompts", {"name": "bench/complete"}),
            ("POST", "/v1/prompts/bench%2Fcomplete/versions", {
                "kind": "chat", "messages": [{"role": "user", "content": "Hi {{ name }}"}],
                "config": {"name": "stand-in", "version": 1},
            }),
            ("POST", "/v1/prompts/bench%2Fcomplete/versions/1/promote", {"to": "production", "expected_current": None}),
        ]:  # fmt: skip
            response = await http.request(method, path, json=body)
            response.raise_for_status()
    await asyncio.sleep(0.3)  # the experiment reaches the router


async def measure(requests: int, profile: str | None, stand_in: str) -> dict[str, float]:
    name = f"registry_cpu_{uuid.uuid4().hex[:8]}"
    await admin(f'CREATE DATABASE "{name}"')
    os.environ.update(
        REGISTRY_DATABASE_URL=database_url(name),
        REGISTRY_REDIS_URL=REDIS_URL,
        REGISTRY_REDIS_KEY_PREFIX=f"cpu-{uuid.uuid4().hex[:8]}:",
        REGISTRY_ACCESS_LOG="false",
        REGISTRY_LOG_LEVEL="WARNING",
        REGISTRY_ROLE="api",
        REGISTRY_BACKENDS=json.dumps({"stand-in": {"url": stand_in}}),
    )
    from bench.app import create_bench_app
    from registry.settings import Settings

    secret = await prepare(Settings())
    app = create_bench_app()
    runtime = app.state.runtime
    await runtime.start()
    try:
        await publish(app, secret)
        auth = [(b"authorization", f"Bearer {secret}".encode())]
        json_auth = [*auth, (b"content-type", b"application/json")]
        units = iter(range(10**9))
        batches = iter(range(10**9))
        now = datetime.now(UTC).isoformat()

        def events_body() -> bytes:
            """A batch of new events (new idempotency keys and units), as apps send them."""
            batch = next(batches)
            events = [
                {
                    "unit": f"e{batch}-{i}",
                    "metric": "bench_converted",
                    "idempotency_key": f"e{batch}-{i}",
                    "timestamp": now,
                }
                for i in range(EVENT_BATCH)
            ]
            return json.dumps({"events": events}).encode()

        scenarios: dict[str, Callable[[], Call]] = {
            "bare": lambda: asgi_call(app, "GET", "/bench/bare", []),
            "bare (raw ASGI)": lambda: asgi_call(app, "GET", "/bench/raw", []),
            "resolve": lambda: asgi_call(app, "GET", f"/v1/prompts/{PATH}", auth),
            "render": lambda: asgi_call(
                app, "POST", f"/v1/prompts/{PATH}/render", json_auth, b'{"variables": {"name": "Ada"}}'
            ),
            "render+unit": lambda: asgi_call(
                app,
                "POST",
                f"/v1/prompts/{PATH}/render",
                json_auth,
                b'{"variables": {"name": "Ada"}, "unit": "u%d"}' % next(units),
            ),
            "complete (stream, 32 tokens)": lambda: asgi_call(
                app,
                "POST",
                "/v1/prompts/bench%2Fcomplete/complete",
                json_auth,
                b'{"variables": {"name": "Ada"}, "stream": true}',
            ),
            EVENTS: lambda: asgi_call(app, "POST", "/v1/events", json_auth, events_body()),
        }
        for label, make in scenarios.items():
            assert await make()() == 200, label
        rounds: dict[str, list[float]] = {label: [] for label in scenarios}
        for round_number in range(ROUNDS + 1):  # interleaved, so a slow spell of the machine hits every scenario
            for label, make in scenarios.items():
                count = max(requests // SLOWER.get(label.split(" ")[0], 1), 20)
                calls = [make() for _ in range(count)]
                started = time.process_time()
                for call in calls:
                    await call()
                if round_number > 0:  # the first round warms caches, buffers and the allocator
                    rounds[label].append((time.process_time() - started) / count * 1e6)
        results = {label: statistics.median(values) for label, values in rounds.items()}
        if profile:
            profiler = cProfile.Profile()
            calls = [scenarios[profile]() for _ in range(2000)]
            profiler.enable()
            for call in calls:
                await call()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return results
    finally:
        await runtime.stop()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(results: dict[str, float], requests: int) -> str:
    bare, raw = results["bare"], results["bare (raw ASGI)"]
    lines = [
        SECTION,
        "",
        "CPU time of this process per request, calling the ASGI app directly (no sockets, no load "
        "generator): medians of 5 interleaved rounds after a warm-up round. The completion's stand-in "
        "backend runs in another process and is not counted. `bare` is a Litestar handler; "
        "`bare (raw ASGI)` is answered in front of Litestar, where the resolve and render fast path sits.",
        "",
        "| scenario | µs CPU per request | bare / scenario | raw / scenario |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {label} | {us:,.1f} | {bare / us:.0%} | {raw / us:.0%} |" for label, us in results.items()),
        "",
        f"- events: {results[EVENTS] / EVENT_BATCH:,.1f} µs of the API's CPU per event, validation, idempotency "
        "and the unit queue included (PostgreSQL's own CPU is not counted)",
        f"- command: `make bench-cpu` (`python bench/fast_path_cpu.py --requests {requests}`)",
        f"- machine: {machine()}",
        f"- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000, help="Requests per round and scenario.")
    parser.add_argument("--profile", help="Print a cProfile of this scenario (e.g. 'render+unit').")
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args()
    with fault_server() as stand_in:
        results = asyncio.run(measure(args.requests, args.profile, stand_in))
    body = report(results, args.requests)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
