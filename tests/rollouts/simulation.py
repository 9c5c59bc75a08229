"""Rollouts simulated end to end, shared by the rollout tests and ``bench/rollouts.py``.

A prompt whose production version answers through one stand-in model and whose candidate (the same
version with another config) answers through another (``tests/completions/fault_server.py`` scripts each
by its name: ``errors:0.05``, ``latency:100:500``, ...); completions for new units through the registry's
own ``/v1/prompts/{name}/complete``; the background work (exposures, completion records, aggregation) done
on demand; and the checker, as the worker runs it, on a fake clock. Nothing here reads the machine's clock
to decide anything, so a simulation is as repeatable as its stand-in models and the rollout's seed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from litestar import Litestar

from registry.db.base import utcnow
from registry.rollouts.plan import Action
from registry.runtime import Runtime

FAILED = "failed"  # the guardrail metric: any failed completion of a unit
LATENCY_P95 = "latency_p95"
ERRORS_GUARDRAIL = {"metric": FAILED, "tolerance": 0.0, "relative": False}  # any significant increase
LATENCY_GUARDRAIL = {"metric": LATENCY_P95, "tolerance": 0.05}  # up to 5% slower at p95 is accepted


class FakeClock:
    """The checker's clock: moved by the test, never read from the machine after the start."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, f"{response.request.url}: {response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    return body


async def create_metrics(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """The guardrail metrics, read from the completions: ``failed`` (binomial) and ``latency_p95``."""
    for metric in (
        {"key": FAILED, "kind": "binomial", "source_field": "error"},
        {"key": LATENCY_P95, "kind": "quantile", "quantile": 0.95, "source_field": "latency_ms"},
    ):
        body = {"source": "completions", "direction": "lower", **metric}
        await ok(await http.post("/v1/metrics", json=body, headers=headers), 201)


async def _config(http: httpx.AsyncClient, headers: dict[str, str], name: str, backend: str, model: str) -> None:
    await ok(await http.post("/v1/configs", json={"name": name}, headers=headers), 201)
    body = {"backend": backend, "model": model, "params": {"max_tokens": 3}}
    await ok(await http.post(f"/v1/configs/{name}/versions", json=body, headers=headers), 201)


@dataclass
class Simulation:
    """One prompt's rollouts against the stand-in, through an app served in this process."""

    http: httpx.AsyncClient
    app: Litestar
    headers: dict[str, str]
    prompt: str = "greet"
    clock: FakeClock = field(default_factory=FakeClock)
    sent: int = 0  # units sent so far (each unit completes once)
    concurrency: int = 10
    # Seconds between two requests' starts (0: all at once, ``concurrency`` at a time): arrivals spread out, as
    # real traffic's, so a request's latency is the backend's plus its own handling, not a queue of others'.
    spacing: float = 0.0

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    @property
    def path(self) -> str:
        return quote(self.prompt, safe="")

    async def prepare(self, *, production_model: str, candidate_model: str, backend: str = "stand-in") -> None:
        """The prompt's version 1 in production with config ``<prompt>-production``; ``<prompt>-candidate`` aside."""
        production, candidate = f"{self.prompt}-production", f"{self.prompt}-candidate"
        await _config(self.http, self.headers, production, backend, production_model)
        await _config(self.http, self.headers, candidate, backend, candidate_model)
        await ok(await self.http.post("/v1/prompts", json={"name": self.prompt}, headers=self.headers), 201)
        version = {
            "kind": "chat",
            "messages": [{"role": "user", "content": "Say hello to {{ name }}."}],
            "config": {"name": production, "version": 1},
        }
        await ok(await self.http.post(f"/v1/prompts/{self.path}/versions", json=version, headers=self.headers), 201)
        promote = {"to": "production", "expected_current": None}
        await ok(
            await self.http.post(f"/v1/prompts/{self.path}/versions/1/promote", json=promote, headers=self.headers)
        )

    async def start(self, steps: list[dict[str, Any]], guardrails: list[dict[str, Any]]) -> dict[str, Any]:
        """A rollout of the candidate config (version 1 with it) on ``steps``, watched by ``guardrails``."""
        body = {
            "candidate_version": 1,
            "config": {"name": f"{self.prompt}-candidate", "version": 1},
            "steps": steps,
            "guardrails": guardrails,
        }
        rollout = await ok(
            await self.http.post(f"/v1/prompts/{self.path}/rollouts", json=body, headers=self.headers), 201
        )
        await self.settle()
        return rollout

    async def settle(self) -> None:
        """Until this app's router has applied the changes published so far (a new share, an ended rollout)."""
        await self.runtime.experiments.router.settled()

    async def complete(self, count: int) -> list[int]:
        """One completion for each of ``count`` new units, ``concurrency`` at a time; their statuses."""
        limit = asyncio.Semaphore(self.concurrency)

        async def one(unit: int) -> int:
            async with limit:
                response = await self.http.post(
                    f"/v1/prompts/{self.path}/complete",
                    json={"variables": {"name": "Ada"}, "unit": f"user-{unit}"},
                    headers=self.headers,
                )
                return response.status_code

        units = range(self.sent, self.sent + count)
        self.sent += count
        if self.spacing:
            tasks = []
            for unit in units:
                tasks.append(asyncio.ensure_future(one(unit)))
                await asyncio.sleep(self.spacing)
            statuses = await asyncio.gather(*tasks)
        else:
            statuses = await asyncio.gather(*(one(unit) for unit in units))
        await self.fold_in()
        return statuses

    async def fold_in(self) -> None:
        """Exposures written and aggregated, then the completions' records (which need the exposures)."""
        runtime = self.runtime
        await runtime.experiments.exposures.flush()
        await runtime.experiments.aggregator.drain()
        await runtime.completions.recorder.flush()
        await runtime.experiments.aggregator.drain()

    async def check(self, rollout_id: int) -> Action | None:
        """One check of the rollout, as the worker makes it, at the fake clock's time."""
        checker = self.runtime.rollouts
        checker.clock = self.clock
        action = await checker.check(rollout_id)
        await self.settle()
        return action

    async def rollout(self, rollout_id: int) -> dict[str, Any]:
        return await ok(await self.http.get(f"/v1/rollouts/{rollout_id}", headers=self.headers))

    async def run(self, rollout_id: int, *, batch: int, limit: int, seconds: float = 60.0) -> Outcome:
        """Batches of ``batch`` new units, the clock moved by ``seconds`` and a check after each, until the
        rollout ends or ``limit`` units were sent; what came of it."""
        started, actions = self.sent, []
        while self.sent - started < limit:
            await self.complete(batch)
            self.clock.advance(seconds)
            action = await self.check(rollout_id)
            assert action is not None, "the checker did not get the rollout's lease"
            actions.append(action.kind)
            if action.kind in ("rollback", "promote"):
                break
        shown = await self.rollout(rollout_id)
        return Outcome(shown["status"], self.sent - started, actions, shown)


@dataclass(frozen=True)
class Outcome:
    status: str  # the rollout's at the end: rolled_back, completed, or running when the limit came first
    units: int  # units sent (each completed once) until then
    actions: list[str]  # what each check did
    rollout: dict[str, Any]  # as GET /v1/rollouts/{id} shows it at the end

    @property
    def candidate_units(self) -> int:
        """Units on the candidate in the step that ended it (the evidence of the last check)."""
        evidence = self.rollout["evidence"] or {}
        return int(evidence.get("units", {}).get("candidate", 0))

    @property
    def candidate_units_in_all_steps(self) -> int:
        """Units on the candidate in all steps until the end (each step's summed, as the evidence counts them)."""
        evidence = self.rollout["evidence"] or {}
        return int(evidence.get("units_total", {}).get("candidate", 0))
