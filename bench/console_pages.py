"""Benchmark: each console page's server time at 1,000 prompts, 100 experiments, 1M exposures (target: p50 < 50 ms).

The service runs in this process (Litestar's ASGI test client, lifespan on) on a scratch
PostgreSQL database. Prompts, versions, configs and experiments are created through the API, as
a client would; the 1,000,000 exposures (and the per-unit rows the aggregator would derive from
them), completions and audit rows are loaded with ``INSERT ... SELECT generate_series``, the
experiments' statistics (overall and per hour) summed once (``rebuild_sums``), as ``bench/results_bench.py``
does, and the daily usage rollup built once from the completions (``rebuild_rollup``).
Then it signs in through ``/console/login`` with an admin key and requests each page N times
in turn; a page's time is the request's wall time in this process on an otherwise quiet loop
(the app records no server timing), so it is server time plus a fraction of a millisecond of
in-process transport.

Run: ``make bench-console`` (or ``python bench/console_pages.py``); the table is written into
BENCHMARKS.md under "## Console pages". The PostgreSQL server is REGISTRY_BENCH_POSTGRES_URL
(default postgresql+asyncpg://postgres@127.0.0.1:5432/postgres); the scratch database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from litestar.testing import AsyncTestClient
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import admin, database_url, machine, prepare, write_section  # noqa: E402
from registry.app import create_app  # noqa: E402
from registry.completions.repository import CompletionRepository  # noqa: E402
from registry.db.engine import create_engine, create_sessionmaker  # noqa: E402
from registry.experiments.repository import StatisticsRepository  # noqa: E402
from registry.settings import Settings  # noqa: E402

SECTION = "## Console pages"
TARGET_MS = 50.0
BIG = "bench-exp-000"  # the experiment whose results page is measured: the largest share of the exposures


# What the pages that were over the target read now, from EXPLAIN ANALYZE and cProfile on a database this script
# seeded (--keep-database).
WHY = """Where the time went on the pages that were over the target, and what they read now:

- **Experiment results** read the per-variant sufficient statistics (constant cost, see "Experiment results"),
  but the over-time charts grouped the per-unit rows (`experiment_units`, joined to `unit_metric_values` for
  the primary metric) by hour: two scans of the experiment's units, about 0.5 ms per 1,000 units (291 ms at
  500,000 units). They now read per-hour rollups (`experiment_hourly_units`, `experiment_hourly_metric_sums`:
  units, and a metric's count, sum and sum of squares, per experiment, phase, variant and hour of first
  exposure), which the aggregator keeps by the same differences and in the same transaction as the per-variant
  sums, so the page costs the same at 10,000 and 500,000 units: a few hundred rows (seven days of hours, two
  variants), the statistics and the SVG charts. Migration 0008 fills them from the per-unit rows.
- **Usage** aggregated the raw `completions` rows of the window (a scan and sort of every completion, 168 ms
  for 100,000) and then read a row per day and prompt. Completions are now also summed per UTC day, prompt,
  version, config, key, experiment and variant (`usage_daily`) in the transaction that writes them; reports
  over whole days (`GET /v1/usage`, the page) read those rows, and the page reads the totals per group, the
  days of the seven largest groups and the rest summed per day instead of a row per day and group (6,000 rows
  here; decoding them was most of the page once the scan was gone).
- Fixed before: the prompt list and the playground's prompt list read each listed prompt's production and
  staging versions with one query per listed prompt (52 statements for a page of 50); they read them in one
  (`VersionedRepository.holder_numbers`, 3 statements)."""


def named(prompt: int) -> str:
    return f"bench/prompt-{prompt:04d}"


async def call(http: httpx.AsyncClient, method: str, path: str, body: Any = None) -> Any:
    response = await http.request(method, path, json=body)
    if response.status_code >= 300:
        raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
    return response.json() if response.content else None


async def seed_prompt(http: httpx.AsyncClient, number: int, versions: int, config: str | None) -> None:
    """A prompt with ``versions`` versions (v1 in production, the last in staging), some on a model config."""
    name = named(number)
    await call(http, "POST", "/v1/prompts", {"name": name, "description": f"Prompt {number}", "tags": ["bench"]})
    path = quote(name, safe="")
    for version in range(1, versions + 1):
        body: dict[str, Any] = {
            "kind": "text",
            "template": f"Hello {{{{ name }}}}, version {version} of prompt {number}.\nAsk about {{{{ topic }}}}.",
            "commit_message": f"change {version}",
        }
        if config is not None:
            body["config"] = {"name": config, "version": 1}
        await call(http, "POST", f"/v1/prompts/{path}/versions", body)
    await call(http, "POST", f"/v1/prompts/{path}/versions/1/promote", {"to": "production", "expected_current": None})
    if versions > 1:
        await call(
            http, "POST", f"/v1/prompts/{path}/versions/{versions}/promote", {"to": "staging", "expected_current": None}
        )


async def seed_api(http: httpx.AsyncClient, prompts: int, experiments: int, concurrency: int) -> None:
    """Configs, prompts and experiments through the API; the first half of the experiments running."""
    configs = []
    for number in range(5):
        name = f"bench-config-{number}"
        await call(http, "POST", "/v1/configs", {"name": name})
        await call(http, "POST", f"/v1/configs/{name}/versions", {"backend": "openai", "model": f"model-{number}"})
        configs.append(name)
    await call(http, "POST", "/v1/metrics", {"key": "bench_converted", "kind": "binomial"})
    numbers = iter(range(prompts))

    async def worker() -> None:
        for number in numbers:
            config = configs[number % len(configs)] if number % 3 == 0 else None
            await seed_prompt(http, number, versions=2 + number % 3, config=config)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for number in range(experiments):
        key = f"bench-exp-{number:03d}"
        await call(
            http,
            "POST",
            "/v1/experiments",
            {
                "key": key,
                "prompt": named(number),
                "variants": [{"key": "a", "prompt_version": 1}, {"key": "b", "prompt_version": 2}],
                "primary_metric": "bench_converted",
            },
        )
        if number < experiments // 2:
            await call(http, "POST", f"/v1/experiments/{key}/start")


# The per-unit rows the aggregator derives: one standing per exposure (a single variant each) and a
# conversion for one unit in ten; spread over the running experiments, half of them in the first one.
SEED_SQL = [
    """
    INSERT INTO exposures (experiment_id, phase, unit, variant, exposed_at)
    SELECT e.id, 1, 'unit-' || g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END,
           now() - interval '7 days' * random()
    FROM generate_series(1, :exposures) AS g
    JOIN (SELECT id, row_number() OVER (ORDER BY key) - 1 AS slot FROM experiments WHERE status = 'running') AS e
      ON e.slot = CASE WHEN g <= :exposures / 2 THEN 0 ELSE 1 + g % (:running - 1) END
    """,
    """
    INSERT INTO experiment_units (experiment_id, phase, unit, variant, first_exposed_at)
    SELECT experiment_id, phase, unit, variant, exposed_at FROM exposures
    """,
    """
    INSERT INTO unit_metric_values (experiment_id, phase, metric_id, unit, variant, value, pre_value)
    SELECT u.experiment_id, u.phase, m.id, u.unit, u.variant, 1.0, 0.0
    FROM experiment_units AS u, metrics AS m
    WHERE m.key = 'bench_converted' AND hashtext(u.unit) % 10 = 0
    """,
    """
    INSERT INTO completions (created_at, prompt, prompt_version, config, config_version, backend, model,
                             api_key_id, status, input_tokens, output_tokens, cost, latency_ms,
                             stream, fallback_used, cached)
    SELECT now() - interval '30 days' * random(), 'bench/prompt-' || lpad((g % 200)::text, 4, '0'), 1,
           'bench-config-' || g % 5, 1, 'openai', 'model-' || g % 5, k.public_id, 'ok', 50, 20, 0.0001, 300,
           false, false, false
    FROM generate_series(1, :completions) AS g, (SELECT public_id FROM api_keys LIMIT 1) AS k
    """,
    """
    INSERT INTO audit_log (created_at, actor, action, resource_type, resource_name, before, after)
    SELECT now() - interval '30 days' * random(), 'bench-' || g % 7, 'prompt.updated', 'prompt',
           'bench/prompt-' || lpad((g % 1000)::text, 4, '0'), '{"description": "old"}', '{"description": "new"}'
    FROM generate_series(1, :audit) AS g
    """,
]


SEEDED_TABLES = ("exposures", "experiment_units", "unit_metric_values", "completions", "audit_log")


async def seed_sql(settings: Settings, exposures: int, completions: int, audit: int) -> None:
    engine = create_engine(settings)
    async with engine.connect() as connection:
        running = (await connection.execute(text("SELECT count(*) FROM experiments WHERE status = 'running'"))).scalar()
        values = {"exposures": exposures, "running": running, "completions": completions, "audit": audit}
        for statement in SEED_SQL:
            await connection.execute(text(statement), {k: v for k, v in values.items() if f":{k}" in statement})
        await connection.commit()
        ids = (await connection.execute(text("SELECT id FROM experiments WHERE status = 'running'"))).scalars().all()
    async with create_sessionmaker(engine)() as session, session.begin():
        for experiment_id in ids:
            await StatisticsRepository(session).rebuild_sums(experiment_id)
        await CompletionRepository(session).rebuild_rollup()
    async with engine.connect() as connection:
        for table in (*SEEDED_TABLES, "experiment_hourly_units", "experiment_hourly_metric_sums", "usage_daily"):
            await connection.execute(text(f"ANALYZE {table}"))
        await connection.commit()
    await engine.dispose()


async def sign_in(http: httpx.AsyncClient, secret: str) -> None:
    """Through the sign-in form, as a browser: the form's cookie and CSRF token, then the session cookie."""
    form = await http.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None, form.text[:500]
    response = await http.post(
        "/console/login",
        data={"csrf": csrf.group(1), "next": "/console/prompts", "api_key": secret},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text[:500]


def pages(webhook_id: int, key_id: str) -> list[tuple[str, str]]:
    prompt = quote(named(7), safe="")
    return [
        ("prompts list", "/console/prompts"),
        ("prompts list, search", "/console/prompts?q=bench%2Fprompt-09"),
        ("prompt", f"/console/prompts/{prompt}"),
        ("diff", f"/console/prompts/{prompt}/diff?from=1&to=3"),
        ("promote plan", f"/console/prompts/{prompt}/versions/2/promote?to=production"),
        ("rollback plan", f"/console/prompts/{prompt}/rollback"),
        ("playground prompts", "/console/playground"),
        ("playground", f"/console/prompts/{prompt}/playground"),
        ("experiments list", "/console/experiments"),
        ("experiments, running", "/console/experiments?status=running"),
        ("new experiment form", "/console/experiments/new"),
        ("experiment results (500,000 units)", f"/console/experiments/{BIG}"),
        ("experiment results (10,000 units)", "/console/experiments/bench-exp-001"),
        ("experiment results (draft)", "/console/experiments/bench-exp-099"),
        ("edit experiment form", "/console/experiments/bench-exp-099/edit"),
        ("stop plan", f"/console/experiments/{BIG}/stop"),
        ("evaluation runs", "/console/evals"),
        ("evaluation datasets", "/console/evals/datasets"),
        ("new evaluation run form", "/console/evals/new"),
        ("usage by prompt, 30 days", "/console/usage"),
        ("usage by key, 90 days", "/console/usage?by=key&days=90"),
        ("audit", "/console/audit"),
        ("audit, one resource", f"/console/audit?resource_type=prompt&resource={quote(named(7), safe='')}"),
        ("keys", "/console/keys"),
        ("key", f"/console/keys/{key_id}"),
        ("webhooks", "/console/webhooks"),
        ("webhook", f"/console/webhooks/{webhook_id}"),
    ]


Row = tuple[str, str, float, float, float, int]  # label, path, p50 ms, p95 ms, SQL p50 ms, statements


class StatementClock:
    """The time a request spends in the database: each statement's execution, summed (the engine's events)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.sync_engine
        self.started: dict[int, float] = {}
        self.total_ms = 0.0
        self.statements = 0

    def __enter__(self) -> StatementClock:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)

    def reset(self) -> None:
        self.total_ms, self.statements = 0.0, 0

    def _before(self, _connection: Any, cursor: Any, *_: Any) -> None:
        self.started[id(cursor)] = time.perf_counter()

    def _after(self, _connection: Any, cursor: Any, *_: Any) -> None:
        self.total_ms += (time.perf_counter() - self.started.pop(id(cursor))) * 1000
        self.statements += 1


def percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(share * (len(sorted_values) - 1)))]


async def time_pages(
    http: httpx.AsyncClient, engine: AsyncEngine, targets: list[tuple[str, str]], runs: int
) -> list[Row]:
    rows: list[Row] = []
    with StatementClock(engine) as clock:
        for label, path in targets:
            first = await http.get(path)  # warm: templates compiled, statements prepared
            if first.status_code != 200:
                raise RuntimeError(f"{path}: {first.status_code} {first.text[:500]}")
            timings, in_database = [], []
            for _ in range(runs):
                clock.reset()
                started = time.perf_counter()
                response = await http.get(path)
                timings.append((time.perf_counter() - started) * 1000)
                in_database.append(clock.total_ms)
                assert response.status_code == 200, (path, response.status_code)
            timings.sort()
            row = (label, path, statistics.median(timings), percentile(timings, 0.95))
            rows.append((*row, statistics.median(in_database), clock.statements))
            print(f"{label:40} p50 {row[2]:8.1f} ms  p95 {row[3]:8.1f} ms  SQL {rows[-1][4]:8.1f} ms", flush=True)
    return rows


async def run(args: argparse.Namespace) -> None:
    name = f"registry_bench_{uuid.uuid4().hex[:8]}"
    await admin(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(
            database_url=database_url(name),
            redis_url=None,
            access_log=False,
            log_level="WARNING",
            bootstrap_admin_key=False,
            database_statement_timeout_ms=0,
            webhook_dispatch_interval_seconds=3600,
            webhook_allowed_networks=["127.0.0.0/8"],
        )
        secret = await prepare(settings)
        started = time.perf_counter()
        app = create_app(settings)
        async with AsyncTestClient(app=app, timeout=600) as http:
            api = {"Authorization": f"Bearer {secret}"}
            http.headers.update(api)
            await seed_api(http, args.prompts, args.experiments, args.concurrency)
            webhook = await call(
                http, "POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["prompt.promoted"]}
            )
            keys = await call(http, "GET", "/v1/keys")
            api_seconds = time.perf_counter() - started
            started = time.perf_counter()
            await seed_sql(settings, args.exposures, args.completions, args.audit)
            sql_seconds = time.perf_counter() - started
            del http.headers["Authorization"]  # the console's pages go by the session cookie only
            await sign_in(http, secret)
            targets = pages(webhook["webhook"]["id"], keys["items"][0]["id"])
            rows = await time_pages(http, app.state.runtime.engine, targets, args.runs)
        engine = create_engine(settings)
        async with engine.connect() as connection:
            version = (await connection.execute(text("SHOW server_version"))).scalar_one()
        await engine.dispose()
    finally:
        if args.keep_database:
            print(f"kept the database {name} (REGISTRY_DATABASE_URL={database_url(name)})")
        else:
            await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    table = ["| page | path | p50 ms | p95 ms | in SQL, p50 ms | statements |", "|---|---|---:|---:|---:|---:|"]
    for label, path, p50, p95, sql, statements in rows:
        mark = "" if p50 < TARGET_MS else " **over**"
        table.append(f"| {label} | `{path}` | {p50:.1f}{mark} | {p95:.1f} | {sql:.1f} | {statements} |")
    over = [row[0] for row in rows if row[2] >= TARGET_MS]
    body = "\n".join(
        [
            SECTION,
            "",
            f"Server time of each console page (target: p50 under {TARGET_MS:.0f} ms) with {args.prompts:,} prompts "
            f"(2 to 4 versions each, a third on a model config), {args.experiments} experiments (half running), "
            f"{args.exposures:,} exposures (half in `{BIG}`, the rest over the other running experiments, one "
            f"per-unit standing each, a conversion for one unit in ten), {args.completions:,} completions and "
            f"{args.audit:,} audit entries. The service runs in the benchmark's process (ASGI, lifespan on) signed "
            f"in through `/console/login` with an admin key; each page is requested once to warm up, then "
            f"{args.runs} times in turn; a time is the request's wall time on a quiet loop.",
            "",
            *table,
            "",
            f'Pages over the target: {", ".join(over) if over else "none"}. "In SQL" is the time the request\'s '
            'statements took to execute (the engine\'s cursor events), "statements" how many it ran.',
            "",
            WHY,
            "",
            f"- command: `make bench-console` (`python bench/console_pages.py --runs {args.runs}`)",
            f"- machine: {machine()}; PostgreSQL {version} on the same machine",
            f"- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; seeding took {api_seconds:.0f} s through the API "
            f"and {sql_seconds:.0f} s in SQL",
            "",
        ]
    )
    print(body)
    if not args.no_write:
        write_section(SECTION, body, args.output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--exposures", type=int, default=1_000_000)
    parser.add_argument("--completions", type=int, default=100_000)
    parser.add_argument("--audit", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8, help="Prompts seeded at once.")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="Markdown file to update.")
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    parser.add_argument("--keep-database", action="store_true", help="Keep the seeded database (to EXPLAIN).")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
