"""Benchmark: many rollouts end to end against the stand-in backend (units to a rollback, A/A false rollbacks).

The registry runs in this process on a scratch PostgreSQL database; the stand-in is the tests' fault server in
its own process, each version's error rate and latency spread set by its model name (``errors:0.05``,
``latency:100:500``; see ``tests/completions/fault_server.py``). Completions for new units go through the
registry's own ``/v1/prompts/{name}/complete``; the background work (exposures, completion records,
aggregation) and the checker run on demand, the checker on a fake clock (``tests/rollouts/simulation.py``,
shared with the tests), after every batch of units. Three cases:

- errors: production fails 5% of completions, the candidate 10% (five points more); the rollout holds at half
  the traffic until the guardrail ``failed`` (absolute, tolerance 0) decides. Reported: how many were rolled
  back and the units it took (median and quartiles).
- A/A: the candidate is production's equal (5% errors both, separate streams) on the whole staged plan
  (5%, 25%, 50%, 100%) through to its promotion. Reported: the share wrongly rolled back, its Wilson interval,
  against alpha (0.05).
- p95: production answers in 100 to 500 ms, the candidate in 120 to 600 ms (20% slower at every quantile); the
  guardrail ``latency_p95`` tolerates 5%. Reported as for errors.

Run: ``make bench-rollouts`` (or ``python bench/rollouts.py``); the numbers are written into BENCHMARKS.md
under "## Rollouts". The PostgreSQL server is REGISTRY_BENCH_POSTGRES_URL (default
postgresql+asyncpg://postgres@127.0.0.1:5432/postgres); the scratch database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import admin, database_url, fault_server, machine, prepare, write_section  # noqa: E402
from registry.app import create_app  # noqa: E402
from registry.settings import BackendSettings, Settings  # noqa: E402
from registry.stats import wilson_interval  # noqa: E402
from tests.rollouts.simulation import (  # noqa: E402
    ERRORS_GUARDRAIL,
    LATENCY_GUARDRAIL,
    Outcome,
    Simulation,
    create_metrics,
)

SECTION = "## Rollouts"
ALPHA = 0.05
HOLD = [{"share": 0.5, "min_units": 1_000_000_000}, {"share": 1.0}]  # half the traffic until the guardrails decide
PLAN = [
    {"share": 0.05, "min_units": 200},
    {"share": 0.25, "min_units": 400},
    {"share": 0.5, "min_units": 1000},
    {"share": 1.0},
]
BATCH = 100  # units between two checks


@dataclass
class Case:
    """The outcomes of one case's rollouts, and how long they took."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rolled_back(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "rolled_back"]

    def units_to_rollback(self) -> tuple[float, float, float]:
        """Quartiles (first, median, third) of the units sent until each rollback."""
        units = sorted(o.units for o in self.rolled_back)
        if len(units) < 2:
            value = float(units[0]) if units else float("nan")
            return value, value, value
        first, median, third = statistics.quantiles(units, n=4, method="inclusive")
        return first, median, third


async def run_case(sim_of: Any, name: str, count: int, production: str, candidate: str, **plan: Any) -> Case:
    case = Case(name)
    started = time.perf_counter()
    for i in range(count):
        sim: Simulation = await sim_of(f"{name}-{i}")
        await sim.prepare(production_model=f"{production}/{name}-{i}-p", candidate_model=f"{candidate}/{name}-{i}-c")
        rollout = await sim.start(plan["steps"], plan["guardrails"])
        outcome = await sim.run(rollout["id"], batch=plan.get("batch", BATCH), limit=plan["limit"])
        case.outcomes.append(outcome)
        print(f"{name} {i + 1}/{count}: {outcome.status} after {outcome.units} units ({outcome.rollout['reason']})")
    case.seconds = time.perf_counter() - started
    return case


async def measure(base: str, args: argparse.Namespace) -> dict[str, Case]:
    name = f"bench_rollouts_{uuid.uuid4().hex[:8]}"
    await admin(f'CREATE DATABASE "{name}"')
    try:
        stand_in = BackendSettings(url=base, max_retries=0, breaker_failures=1_000_000, total_timeout=30.0)
        settings = Settings(
            database_url=database_url(name),
            access_log=False,
            log_level="WARNING",
            bootstrap_admin_key=False,
            backends={"stand-in": stand_in},
            # The background work runs when the simulation asks, as in the tests.
            experiment_exposure_flush_seconds=3600.0,
            experiment_statistics_seconds=3600.0,
            rollout_check_seconds=3600.0,
            completion_usage_flush_seconds=3600.0,
        )
        secret = await prepare(settings)
        app = create_app(settings)
        # Each injected 500 is logged as a failed request; thousands of them would bury the progress lines.
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
        runtime = app.state.runtime
        await runtime.start()
        headers = {"Authorization": f"Bearer {secret}"}
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                base_url="http://bench",
                timeout=600,
            ) as http:
                await create_metrics(http, headers)

                async def sim_of(prompt: str, concurrency: int = 10) -> Simulation:
                    return Simulation(http, app, headers, prompt=prompt, concurrency=concurrency)

                async def slow_sim_of(prompt: str) -> Simulation:
                    # A request every 10 ms, as many in flight as that makes: latency is the backend's, not a queue's.
                    return Simulation(http, app, headers, prompt=prompt, concurrency=50, spacing=0.01)

                cases = {
                    "errors": await run_case(
                        sim_of, "errors", args.errors, "errors:0.05", "errors:0.10",
                        steps=HOLD, guardrails=[ERRORS_GUARDRAIL], limit=args.limit,
                    ),
                    "aa": await run_case(
                        sim_of, "aa", args.aa, "errors:0.05", "errors:0.05",
                        steps=PLAN, guardrails=[ERRORS_GUARDRAIL], limit=args.limit,
                    ),
                    "p95": await run_case(
                        slow_sim_of, "p95", args.p95, "latency:100:500", "latency:120:600",
                        steps=HOLD, guardrails=[LATENCY_GUARDRAIL], limit=args.limit, batch=50,
                    ),
                }  # fmt: skip
                return cases
        finally:
            await runtime.stop()
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _detection_row(label: str, case: Case) -> str:
    first, median, third = case.units_to_rollback()
    candidate = statistics.median(o.candidate_units for o in case.rolled_back) if case.rolled_back else float("nan")
    return (
        f"| {label} | {len(case.rolled_back)} of {len(case.outcomes)} | {median:,.0f} | {first:,.0f} to {third:,.0f} "
        f"| {candidate:,.0f} | {case.seconds:.0f} s |"
    )


def section(cases: dict[str, Case], args: argparse.Namespace) -> str:
    aa = cases["aa"]
    wrong = len(aa.rolled_back)
    share = wrong / len(aa.outcomes)
    low, high = wilson_interval(share, len(aa.outcomes), 0.05)
    reasons = Counter(o.rollout["reason"] for o in aa.rolled_back)
    at_step = Counter(o.rollout["step"] + 1 for o in aa.rolled_back)
    if high <= ALPHA:
        verdict = "The share wrongly rolled back is at or under alpha, its whole interval too."
    elif share <= ALPHA:
        verdict = (
            f"The share wrongly rolled back is at or under alpha; its interval reaches {high:.1%}: "
            f"{len(aa.outcomes)} rollouts cannot rule out a rate a little above alpha."
        )
    else:
        verdict = "The share wrongly rolled back is above alpha."
    completed = sum(o.status == "completed" for o in aa.outcomes)
    # The split's always-valid p-value at the end of each A/A rollout (the least over all its checks).
    least_split = statistics.median(float(o.rollout["evidence"]["srm_p_value"]) for o in aa.outcomes)
    aa_units = statistics.median(o.units for o in aa.outcomes)
    plan = ", ".join(f"{s['share']:.0%} (at least {s.get('min_units', 0):,} units)" for s in PLAN[:-1]) + ", 100%"
    command = f"python bench/rollouts.py --errors {args.errors} --aa {args.aa} --p95 {args.p95} --limit {args.limit}"
    lines = [
        SECTION,
        "",
        "`make bench-rollouts`: rollouts end to end against the stand-in backend in its own process, each version's "
        "error rate and latency spread set by its model name; completions for new units through the registry's "
        f"`/complete` (in this process, on PostgreSQL), a check by the real checker on a fake clock after every "
        f"{BATCH} units (50 for p95, whose requests start 10 ms apart). Rollouts at alpha {ALPHA}, one budget for all "
        "their tests: the split takes a fifth (the always-valid sequential sample-ratio test, Dirichlet-multinomial "
        "Bayes factor, concentration 1,000, carried across the steps, failing under p = 0.01) and one guardrail at "
        "each step before 100% the rest (0.04 for the worse candidates' one step, 0.0133 each for the A/A plan's "
        "three). Guardrails: `failed` (any failed completion of a unit, absolute, tolerance 0), `latency_p95` "
        "(relative, tolerance 5%).",
        "",
        "A worse candidate, held at 50% of the traffic until the guardrail decides:",
        "",
        "| Candidate | Rolled back | Units to rollback, median | Quartiles | On the candidate, median | Wall time |",
        "| --- | --- | --- | --- | --- | --- |",
        _detection_row("10% errors against production's 5% (five points more)", cases["errors"]),
        _detection_row("20% slower at p95 (120 to 600 ms against 100 to 500 ms)", cases["p95"]),
        "",
        f"A/A: the candidate is production's equal (5% errors each, separate streams) on the staged plan {plan}, "
        "through to its promotion:",
        "",
        "| Rollouts | Wrongly rolled back | Share | Wilson 95% | alpha | Promoted | Units, median "
        "| Split p (least over the checks), median | Wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {len(aa.outcomes)} | {wrong} | {share:.1%} | {low:.1%} to {high:.1%} | {ALPHA:.0%} | {completed} "
        f"| {aa_units:,.0f} | {least_split:.2g} | {aa.seconds:.0f} s |",
        "",
        verdict
        + (
            " Rolled back: " + "; ".join(f"{n}: {r}" for r, n in reasons.items())
            + " (at step " + ", ".join(f"{s}: {n}" for s, n in sorted(at_step.items())) + ")."
            if wrong
            else ""
        ),
        "",
        f"- command: `make bench-rollouts` (`{command}`)",
        f"- machine: {machine()}",
        f"- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--errors", type=int, default=20, help="rollouts of the candidate with five points more errors")
    parser.add_argument("--aa", type=int, default=60, help="A/A rollouts")
    parser.add_argument("--p95", type=int, default=5, help="rollouts of the candidate 20%% slower at p95")
    parser.add_argument("--limit", type=int, default=10_000, help="units after which a rollout is given up")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = parser.parse_args()
    with fault_server() as base:
        cases = asyncio.run(measure(base, args))
    body = section(cases, args)
    if not args.no_write:
        write_section(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
