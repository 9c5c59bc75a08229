"""Benchmark: the fast path against a bare handler of the same server, measured side by side.

Starts the service (PostgreSQL and Redis at 127.0.0.1, a scratch database) under
granian or uvicorn with a bare JSON route added, publishes a prompt with a running
50/50 experiment, and drives it with wrk at 64 connections:

- ``bare``: ``GET /bench/bare`` (the ceiling: same server, same middleware, no work);
- ``bare (raw ASGI)``: ``GET /bench/raw``, answered in front of Litestar where the resolve
  and render fast path sits: the ceiling for the requests that path serves;
- ``resolve``: ``GET /v1/prompts/{name}`` with an API key;
- ``render``: ``POST /v1/prompts/{name}/render`` with variables;
- ``render+unit``: the same with a new unit per request, so every request is assigned
  and records a first exposure.

Scenarios run interleaved for several rounds; medians are reported with the ratio to
the bare handler, and the exposures written are checked against the requests served.
Event ingestion (``POST /v1/events``, batches of 500) is measured separately, and the events stored are counted.

Run: ``make bench-fast`` (or ``python bench/hot_path.py``); results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    PATH,
    deployment,
    machine,
    require_wrk,
    tool_version,
    write_section,
)

SECTION = "## Fast path"
EVENT_RUNS, EVENT_BATCHES, EVENT_BATCH_SIZE = 3, 40, 500

RENDER_UNIT_LUA = """
local counter = 0
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end
request = function()
  counter = counter + 1
  local body = '{"variables": {"name": "Ada"}, "unit": "w' .. id .. '-' .. counter .. '-' .. run .. '"}'
  return wrk.format("POST", nil, nil, body)
end
"""


@dataclass(frozen=True)
class Run:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def parse_wrk(output: str) -> Run:
    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match is None:
            raise ValueError(f"no {label}% latency in wrk output:\n{output}")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Run(rps, latency("50"), latency("99"), total, errors)


def wrk(url: str, seconds: float, connections: int, headers: dict[str, str], script: str | None) -> Run:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script:
        command += ["-s", script]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


async def count_rows(url: str, table: str) -> int:
    engine = create_async_engine(url, poolclass=NullPool)
    async with engine.connect() as connection:
        count = int((await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())
    await engine.dispose()
    return count


def wait_for_exposures(url: str, settle_seconds: float = 2.0, limit_seconds: float = 120.0) -> tuple[int, float]:
    """The exposures stored once writing has caught up with the load, and how long after the load that was.

    Under full load the buffers' writes lag the renders by seconds (they share the cores with the
    server, the load generator and PostgreSQL), so a count taken at a fixed time would call
    exposures lost that are only late: count until the total stops growing.
    """
    started = time.monotonic()
    count, settled_at = -1, started
    while time.monotonic() - started < limit_seconds:
        latest = asyncio.run(count_rows(url, "exposures"))
        now = time.monotonic()
        if latest != count:
            count, settled_at = latest, now
        elif now - settled_at >= settle_seconds:
            break
        time.sleep(0.5)
    return count, settled_at - started


def median_run(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.requests_per_second for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.requests for r in runs),
        sum(r.errors for r in runs),
    )


def ingest_events(base: str, headers: dict[str, str], batches: int, size: int) -> float:
    """Events per second through POST /v1/events, 4 concurrent senders, batches of ``size``."""
    now = datetime.now(UTC).isoformat()
    payloads = [
        json.dumps(
            {
                "events": [
                    {
                        "unit": f"ev-{b}-{i}",
                        "metric": "bench_converted",
                        "value": 1,
                        "idempotency_key": f"ev-{b}-{i}-{uuid.uuid4().hex[:6]}",
                        "timestamp": now,
                    }
                    for i in range(size)
                ]
            }
        ).encode()
        for b in range(batches)
    ]

    async def send_all() -> float:
        limits = httpx.Limits(max_connections=4)
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as http:
            semaphore = asyncio.Semaphore(4)

            async def send(payload: bytes) -> None:
                async with semaphore:
                    response = await http.post(
                        "/v1/events", content=payload, headers={"Content-Type": "application/json"}
                    )
                    response.raise_for_status()
                    if response.json().get("accepted") != size:
                        raise RuntimeError(f"a batch was not fully accepted: {response.text[:300]}")

            started = time.perf_counter()
            await asyncio.gather(*(send(p) for p in payloads))
            return batches * size / (time.perf_counter() - started)

    return asyncio.run(send_all())


def run(server: str, workers: int, seconds: float, rounds: int, connections: int) -> dict[str, object]:
    with deployment(server, workers) as service, tempfile.TemporaryDirectory() as scratch:
        base, headers = service.base, service.headers
        json_headers = {**headers, "Content-Type": "application/json"}
        render_lua = Path(scratch) / "render.lua"
        render_lua.write_text('wrk.method = "POST"\nwrk.body = \'{"variables": {"name": "Ada"}}\'\n')
        scenarios = {
            "bare": (f"{base}/bench/bare", {}, None),
            "bare (raw ASGI)": (f"{base}/bench/raw", {}, None),
            "resolve": (f"{base}/v1/prompts/{PATH}", headers, None),
            "render": (f"{base}/v1/prompts/{PATH}/render", json_headers, str(render_lua)),
        }
        wrk(f"{base}/bench/bare", 2, connections, {}, None)  # warm the server
        for scenario in scenarios.values():
            wrk(scenario[0], 1, connections, scenario[1], scenario[2])  # warm caches and imports
        results: dict[str, list[Run]] = {name: [] for name in [*scenarios, "render+unit"]}
        for round_number in range(rounds):
            unit_lua = Path(scratch) / f"unit{round_number}.lua"
            unit_lua.write_text(f'run = "{round_number}"\n' + RENDER_UNIT_LUA)
            round_scenarios = {
                **scenarios,
                "render+unit": (f"{base}/v1/prompts/{PATH}/render", json_headers, str(unit_lua)),
            }
            for scenario_name, (target, scenario_headers, script) in round_scenarios.items():
                results[scenario_name].append(wrk(target, seconds, connections, scenario_headers, script))
        unit_requests = sum(r.requests - r.errors for r in results["render+unit"])
        exposures, drained_after = wait_for_exposures(service.database_url)
        events_per_second = statistics.median(
            ingest_events(base, headers, batches=EVENT_BATCHES, size=EVENT_BATCH_SIZE) for _ in range(EVENT_RUNS)
        )
        events_stored = asyncio.run(count_rows(service.database_url, "outcome_events"))
    return {
        "medians": {name: median_run(runs) for name, runs in results.items()},
        "exposures": exposures,
        "exposures_drained_after": drained_after,
        "unit_requests": unit_requests,
        "events_per_second": events_per_second,
        "events_stored": events_stored,
    }


def report(results: dict[str, dict[str, object]], args: argparse.Namespace) -> str:
    lines = [
        SECTION,
        "",
        f"wrk at {args.connections} connections, {args.seconds:g} s per run, {args.rounds} interleaved rounds per "
        "scenario; medians. Ratios are to the bare handlers of the same server in the same run: `vs bare` to "
        "the Litestar handler, `vs raw` to the one answered in front of Litestar, where the resolve and "
        "render fast path sits. "
        "Server, load generator, PostgreSQL and Redis share the machine's cores.",
        "",
        "| server | scenario | requests/s | vs bare | vs raw | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, result in results.items():
        medians: dict[str, Run] = result["medians"]  # type: ignore[assignment]
        bare = medians["bare"].requests_per_second
        raw = medians["bare (raw ASGI)"].requests_per_second
        for scenario, median in medians.items():
            lines.append(
                f"| {label} | {scenario} | {median.requests_per_second:,.0f} | "
                f"{median.requests_per_second / bare:.0%} | {median.requests_per_second / raw:.0%} | "
                f"{median.p50_ms:.2f} | {median.p99_ms:.2f} | "
                f"{median.errors} |"
            )
    lines.append("")
    for label, result in results.items():
        lines.append(
            f"- {label}: every request of `render+unit` was a new unit; exposures written: "
            f"{result['exposures']:,} for {result['unit_requests']:,} successful requests (all written "
            f"{result['exposures_drained_after']:.1f} s after the load stopped). "
            f"Event ingestion (`POST /v1/events`, batches of {EVENT_BATCH_SIZE}, 4 concurrent senders, median of "
            f"{EVENT_RUNS} runs of {EVENT_BATCHES} batches): {result['events_per_second']:,.0f} events/s; stored: "
            f"{result['events_stored']:,} of {EVENT_RUNS * EVENT_BATCHES * EVENT_BATCH_SIZE:,} sent."
        )
    lines += [
        "",
        f"- command: `make bench-fast` (`python bench/hot_path.py --servers {' '.join(args.servers)} "
        f"--workers {args.workers} --seconds {args.seconds:g} --rounds {args.rounds}`)",
        f"- machine: {machine()}; {tool_version(['wrk', '--version'])}",
        f"- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--servers", nargs="+", default=["granian", "uvicorn"], choices=["granian", "uvicorn"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args()
    require_wrk()
    results = {
        f"{server}, {args.workers} workers": run(server, args.workers, args.seconds, args.rounds, args.connections)
        for server in args.servers
    }
    body = report(results, args)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
