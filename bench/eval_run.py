"""Benchmark: an evaluation run of 10,000 items against the stand-in backend (items per second, CPU per item).

The registry runs in this process as the embedded single process does (role all: its worker takes the run),
on a scratch PostgreSQL database; the stand-in is the tests' fault server in its own process, answering
every completion at once, so the time measured is the registry's: rendering, the completion path (budget
check, breaker, usage record), scoring, and one transaction per item (its outcome and the run's counters,
under the run's lease). CPU per item is this process's CPU time over the run, divided by the items.

Run: ``make bench-evals`` (or ``python bench/eval_run.py``); the numbers are written into BENCHMARKS.md under
"## Evaluation runs". The PostgreSQL server is REGISTRY_BENCH_POSTGRES_URL (default
postgresql+asyncpg://postgres@127.0.0.1:5432/postgres); the scratch database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import admin, database_url, fault_server, machine, prepare, write_section  # noqa: E402
from registry.app import create_app  # noqa: E402
from registry.settings import BackendSettings, Settings  # noqa: E402

SECTION = "## Evaluation runs"


async def measure(base: str, items: int, concurrency: int) -> tuple[float, float, dict[str, object]]:
    name = f"bench_evals_{uuid.uuid4().hex[:8]}"
    await admin(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(
            database_url=database_url(name),
            access_log=False,
            log_level="WARNING",
            bootstrap_admin_key=False,
            backends={"local": BackendSettings(url=base)},
            eval_poll_seconds=0.05,
            eval_max_concurrency=concurrency,
        )
        secret = await prepare(settings)
        app = create_app(settings)
        runtime = app.state.runtime
        await runtime.start()
        headers = {"Authorization": f"Bearer {secret}"}
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                base_url="http://bench",
                headers=headers,
                timeout=600,
            ) as client:
                return await _run(client, items, concurrency)
        finally:
            await runtime.stop()
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _run(client: httpx.AsyncClient, items: int, concurrency: int) -> tuple[float, float, dict[str, object]]:
    async def ok(response: httpx.Response) -> dict[str, object]:
        if response.status_code >= 300:
            raise SystemExit(f"{response.request.url}: {response.status_code} {response.text}")
        body: dict[str, object] = response.json()
        return body

    await ok(await client.post("/v1/configs", json={"name": "bench"}))
    config = {"backend": "local", "model": "ok", "params": {"temperature": 0, "max_tokens": 3}}
    await ok(await client.post("/v1/configs/bench/versions", json=config))
    await ok(await client.post("/v1/prompts", json={"name": "bench"}))
    version = {
        "kind": "chat",
        "messages": [{"role": "user", "content": "Say hello to {{ name }}."}],
        "config": {"name": "bench", "version": 1},
    }
    await ok(await client.post("/v1/prompts/bench/versions", json=version))
    await ok(await client.post("/v1/evals/datasets", json={"name": "bench"}))
    cases = [{"variables": {"name": f"user {i}"}, "expected": "Hello from the"} for i in range(items)]
    await ok(await client.post("/v1/evals/datasets/bench/versions", json={"items": cases}))
    run = {
        "prompt": "bench",
        "version": 1,
        "dataset": {"name": "bench"},
        "scorers": [{"kind": "exact_match"}, {"kind": "latency_max_ms", "max": 10_000}],
        "concurrency": concurrency,
    }
    wall, cpu = time.perf_counter(), time.process_time()
    started = await ok(await client.post("/v1/evals/runs", json=run))
    while True:
        body = await ok(await client.get(f"/v1/evals/runs/{started['id']}"))
        if body["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.2)
    return time.perf_counter() - wall, time.process_time() - cpu, body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8, help="the run's and the worker's concurrency")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = parser.parse_args()
    with fault_server() as base:
        wall, cpu, run = asyncio.run(measure(base, args.items, args.concurrency))
    if run["status"] != "completed" or run["items_done"] != args.items:
        raise SystemExit(f"the run did not complete: {run}")
    body = (
        f"{SECTION}\n\n"
        f"`make bench-evals`: one run of {args.items:,} items (an exact match and a latency bound each), "
        f"concurrency {args.concurrency}, against the stand-in backend in its own process; the registry in one "
        "process (role all) on PostgreSQL.\n\n"
        "| Items | Passed | Wall time | Items per second | Registry CPU per item |\n| --- | --- | --- | --- | --- |\n"
        f"| {args.items:,} | {run['items_passed']:,} | {wall:.1f} s | {args.items / wall:,.0f} "
        f"| {cpu / args.items * 1000:.2f} ms |\n\n"
        f"- command: `make bench-evals` (`python bench/eval_run.py --items {args.items} "
        f"--concurrency {args.concurrency}`)\n"
        f"- machine: {machine()}\n"
        f"- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
    )
    if args.no_write:
        print(body)
    else:
        write_section(SECTION, body)
        print(body)


if __name__ == "__main__":
    main()
