"""Executing evaluation runs in the worker role: leases, items recorded as they finish, resuming.

A worker takes a run by writing its lease (a token new to this claim, and an expiry) in one
conditional UPDATE, so one worker owns a run at a time across replicas; it renews the lease while it
works, and a lease not renewed expires so another worker takes the run over. An item's outcome is
stored under the primary key (run, item) together with the run's counters, in a transaction whose
UPDATE of the run is conditional on the token: a worker that stalled past its lease and was taken over
(even by itself) writes nothing, a resumed run skips the items already stored, and each item is
scored exactly once.

A stalled worker cannot know whether it was taken over until it asks, so before each completion it
checks its lease (renewing it when it may have run out) and reads the run (``EvalWorker._check_run``): once
taken over, or once the run was cancelled, it asks the backend nothing more, for the items under way too; a run
whose key was revoked, has expired or was deleted is cancelled there, saying which, and never resumed. A
completion already under way when the lease is lost still finishes, and the new owner makes it again; both were
charged to the key, so the run's cost and tokens are what the run spent, its items' costs what the stored
outcomes cost. A completion that ends without an answer (cancelled when the worker stops, failed mid-answer)
spent what its usage record says (the tokens the backend reported before it ended), and that counts too, as do
the completions a model guard's classifier makes inside the run's (charged to the same key): the run's cost is
what its completions' usage records charged the key.

So each completion's spend is added to the run's cost as the completion ends (``EvalWorker._charge``), not
with its item's outcome: a worker killed between an item's completions and its outcome's write (SIGKILL, a
crash, judges still to ask) has charged the run for what its completions spent, and the worker that takes the
run over and asks the item again adds its own. Storing an outcome adds nothing to the run's cost.

A worker that stops cancels the completions it is waiting for, but not a transaction in hand: each
run ends the item it is recording, starts no more, and gives its lease up itself (``EvalWorker.stop``).
A run still working when the stop has waited long enough is cancelled; its transactions end even then,
rolled back, and their connections go back to the pool (``in_transaction``), so its lease is released
at once, on SQLite too. What its completions spent is still charged to it: the stop waits for those
charges.

Completions go through ``CompletionService``, the path ``/complete`` takes (budget check, breaker,
retries, fallback, cache at temperature 0, usage and cost recorded) and are charged to the key that
started the run. A worker-wide limit and each run's own keep evaluations from taking the backends
from production traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import math
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.components import Completions
from registry.completions.errors import (
    BackendNotConfiguredError,
    BudgetHeldError,
    UpstreamBadRequestError,
    UpstreamError,
)
from registry.completions.payload import Overrides
from registry.completions.schemas import CompleteRequest, CompletionOut
from registry.completions.service import RECORDED_ERRORS, Caller, CompletionService, Plan, Run
from registry.completions.upstream import UpstreamStream
from registry.configs.repository import ConfigRepository
from registry.db.base import utcnow
from registry.evals.models import EvalDatasetItem, EvalRun
from registry.evals.repository import PENDING_STATUSES, EvalRepository, LeaseLostError
from registry.evals.scorers import (
    Judge,
    PassRule,
    Score,
    ScoreInput,
    ScorerSpec,
    combine,
    judge_score,
    parse_pass_rule,
    parse_scorers,
    score,
)
from registry.lib.errors import RegistryError
from registry.lib.jobs import PeriodicJob
from registry.lib.logging import error_text
from registry.prompts.catalog import PromptCatalog
from registry.prompts.schemas import LinkedConfig, RenderOut
from registry.settings import Settings

logger = structlog.get_logger("registry.evals")
T = TypeVar("T")

BATCH = 200
OUTAGE_BACKOFF_SECONDS = 5.0
# The longest a backend's Retry-After keeps a run waiting: past it the run asks again (and waits again if told to).
MAX_OUTAGE_BACKOFF_SECONDS = 300.0
# How long a stop waits for runs to reach a safe point (the item being recorded stored); then they are cancelled.
STOP_WAIT_SECONDS = 10.0
JUDGE_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "judgement",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "score": {"type": "number", "minimum": 0, "maximum": 1},
                "reason": {"type": "string", "maxLength": 300},
            },
            "required": ["score", "reason"],
            "additionalProperties": False,
        },
    },
}


class BackendOutageError(Exception):
    """The backend failed after its retries (and the fallback): the run waits and resumes, scoring nothing.

    ``retry_after``: how long the backend asked to be left alone (its Retry-After), when it said so cleanly."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RunEndedError(LeaseLostError):
    """The run was cancelled (or its key revoked, expired or deleted) while it worked: it asks nothing more and
    writes nothing."""


class RunFailedError(Exception):
    """The run cannot go on (the key is over budget, a backend is not configured): it ends as failed."""


class WorkerStoppingError(Exception):
    """The worker is stopping: the run starts nothing more and gives its lease up, for another worker to resume."""


class RunCompletions(CompletionService):
    """The completion path with a run's own config version in place of the prompt version's.

    ``config`` replaces the rendered version's config (None keeps it), also for a version that links
    none; ``response_format`` is added to a payload that has none (a judge's structured answer). A prompt's
    semantic cache never answers a run: it would score a similar item's answer as this item's. Every
    completion adds what its record charged to the attempt it was made for (``EvalWorker._complete``) as
    it is recorded, answered or not (cancelled, failed, blocked): no ``CompletionOut`` says what those
    spent, and a cancellation that comes after the record cannot lose it. Completions made inside it on
    other services (a model guard's classifier) add theirs as they are recorded (``charge_attempt``). The run is
    charged what the attempt's completion spent as it ends (``EvalWorker._charge``).
    """

    semantic_cache = False

    def __init__(
        self,
        completions: Completions,
        catalog: PromptCatalog,
        *,
        config: LinkedConfig | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(charging(completions), catalog, config=config)
        self.response_format = response_format

    def _plan(self, config: LinkedConfig, out: RenderOut, overrides: Overrides) -> Plan:
        plan = super()._plan(config, out, overrides)
        if self.response_format is not None and "response_format" not in plan.payload:
            plan.payload["response_format"] = self.response_format
        return plan

    async def _start(self, run: Run) -> UpstreamStream:
        with backend_wait(asking=True):
            return await super()._start(run)

    @staticmethod
    async def _collect(run: Run, upstream: UpstreamStream) -> None:
        with backend_wait(asking=False):
            await CompletionService._collect(run, upstream)

    def _record(self, run: Run) -> None:
        first = not run.recorded
        attempt = _attempt.get()
        own = _attempt.set(None)  # charged below, with a cache hit's tokens as its answer has them
        try:
            super()._record(run)
        finally:
            _attempt.reset(own)
        if first and attempt is not None:
            spend = run.spend()
            attempt.charge(spend.input_tokens, spend.output_tokens, run.cost_of(spend))


def charge_attempt(record: dict[str, Any]) -> None:
    """Charge what a usage record charges the key to the attempt under way in this task, if any.

    Heard by the usage recorder as each record is added (``UsageRecorder.on_added``): a model guard's classifier
    runs on a completion service of its own inside the run's completion (``CompletionService._guard_input``),
    charged to the run's key, and its records are charged here. Outside a run's completion no attempt is set.
    """
    attempt = _attempt.get()
    if attempt is not None:
        attempt.charge(record.get("input_tokens", 0), record.get("output_tokens", 0), record.get("cost", 0.0))


def charging(completions: Completions) -> Completions:
    """``completions`` with each record charged to its attempt as it is added (``charge_attempt``), made at once.

    A completion left before any usage came is recorded at once, without waiting for its prompt to be counted
    (``registry.completions.prefill``): the attempt it was made for is charged as it is recorded, so the run's
    cost and the key's records agree. Only a stopping worker leaves a run's completions.
    """
    completions.recorder.on_added(charge_attempt)
    if completions.prefill is None:
        return completions
    return dataclasses.replace(completions, prefill=None)


@dataclass(slots=True)
class Lease:
    """This worker's claim on a run: the token its writes are conditional on, and when it runs out."""

    run_id: int
    token: str
    expires_at: datetime
    lost: bool = False


@dataclass(frozen=True, slots=True)
class Spent:
    """What some completions charged the key: added to the run's cost as each completion ends."""

    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0

    def __bool__(self) -> bool:
        return bool(self.cost or self.input_tokens or self.output_tokens)

    def __add__(self, other: Spent) -> Spent:
        return Spent(
            self.cost + other.cost, self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@dataclass(slots=True)
class Attempt:
    """What one try at an item has spent so far (stored with its outcome), and what of it the run was not
    charged yet (``unbilled``, taken as each completion ends: ``EvalWorker._charge``).

    ``waiting``: its completion waits on a backend now, where a stop may cancel it; ``stopping``: the worker
    stops, so its completion asks no backend any more (``backend_wait``).
    """

    completions: int = 0
    cost: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    unbilled: Spent = Spent()
    waiting: bool = False
    stopping: bool = False

    def charge(self, input_tokens: int, output_tokens: int, cost: float) -> None:
        self.completions += 1
        self.cost += cost
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.unbilled += Spent(cost, input_tokens, output_tokens)

    def take_unbilled(self) -> Spent:
        """What the run has not been charged yet, now counted as charged."""
        spend, self.unbilled = self.unbilled, Spent()
        return spend


# The attempt whose completion is under way in this task (set around ``CompletionService.complete``).
_attempt: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("eval_attempt", default=None)


@contextlib.contextmanager
def backend_wait(*, asking: bool) -> Iterator[None]:
    """Around a run's completion waiting on its backend: the one place a stop cancels it (``EvalWorker.stop``),
    since it holds no transaction there. Once the worker stops, no backend is asked (``asking``) any more."""
    attempt = _attempt.get()
    if attempt is None:
        yield
        return
    if asking and attempt.stopping:
        raise WorkerStoppingError("the worker stops; the item is asked again when the run resumes")
    attempt.waiting = True
    try:
        yield
    finally:
        attempt.waiting = False


async def in_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], work: Callable[[AsyncSession], Awaitable[T]]
) -> T:
    """``work`` in a transaction of a task of its own, which ends (committed or rolled back, its connection back
    in the pool) before a cancellation of the caller goes on.

    SQLAlchemy answers a cancellation that reaches a statement by closing the connection, and on SQLite a
    connection closed while a statement still has rows to give (``INSERT ... RETURNING``, a read) stays open,
    its transaction and the database's write lock with it, until that statement is freed: every later write
    (a lease's release included) is refused as locked. So the cancellation never reaches the statement: on
    SQLite it interrupts it (SQLite stops it at once and rolls the transaction back); before the transaction
    has its connection, and on PostgreSQL (asyncpg cancels a query cleanly), it cancels the task.
    """
    interrupt: list[Callable[[], Awaitable[None]]] = []  # SQLite's, once the transaction has its connection

    async def transaction() -> T:
        async with sessionmaker() as session, session.begin():
            connection = await session.connection()
            if connection.dialect.name == "sqlite":
                driver = (await connection.get_raw_connection()).driver_connection
                assert driver is not None  # a connection checked out of the pool has its driver's
                interrupt.append(driver.interrupt)
            return await work(session)

    task = asyncio.create_task(transaction())
    task.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, even if nobody waits
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if interrupt:
            with contextlib.suppress(ValueError):  # aiosqlite's, for a connection already closed
                await interrupt[0]()
        else:
            task.cancel()
        await asyncio.wait({task})
        raise


@dataclass(frozen=True, slots=True)
class JudgeSetup:
    spec: Judge
    completions: RunCompletions


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What executing one run needs, read once when a worker takes it."""

    run_id: int
    prompt: str
    version: int
    dataset_version_id: int
    caller: Caller
    specs: tuple[ScorerSpec, ...]
    rule: PassRule
    completions: RunCompletions
    judges: Mapping[int, JudgeSetup]  # by the scorer's index
    concurrency: int


def _error_row(position: int, status: str, message: str, specs: Sequence[ScorerSpec]) -> dict[str, Any]:
    scores = [score(spec, ScoreInput(output="", error=message)) for spec in specs]
    return {
        "position": position,
        "status": status,
        "output": None,
        "scores": [_score_out(spec, s) for spec, s in zip(specs, scores, strict=True)],
        "score": 0.0,
        "passed": False,
        "error": message,
        "latency_ms": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost": 0.0,
        "cached": False,
        "fallback_used": False,
        "created_at": utcnow(),
    }


def _score_out(
    spec: ScorerSpec, result: Score, judge: Mapping[str, Any] | None = None, *, error: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.name or spec.kind,
        "kind": spec.kind,
        "value": result.value,
        "passed": result.passed,
        "reason": result.reason,
    }
    if error is not None:  # the scorer failed: its value and passed are no verdict
        out["error"] = error
    if judge is not None:
        out["judge"] = dict(judge)
    return out


def parse_judgement(text: str) -> tuple[float, str] | None:
    """The judge's structured answer, ``{"score": number, "reason": text}``; None when it is not that."""
    try:
        answer = msgspec.json.decode(text.strip())
    except (msgspec.DecodeError, RecursionError):  # nested too deep: msgspec raises RecursionError
        return None
    if not isinstance(answer, dict):
        return None
    value, reason = answer.get("score"), answer.get("reason", "")
    if isinstance(value, bool) or not isinstance(value, int | float) or not isinstance(reason, str):
        return None
    return float(value), reason


def retry_after(exc: RegistryError) -> float | None:
    """What a failed backend asked a run to wait (its ``Retry-After`` in seconds), bounded by
    ``MAX_OUTAGE_BACKOFF_SECONDS``; None when it asked nothing or something that is no number of seconds."""
    value: Any = exc.retry_after if isinstance(exc, UpstreamError) else exc.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_OUTAGE_BACKOFF_SECONDS)


def _decisive(failures: ExceptionGroup) -> Exception:
    """The failure that decides what becomes of the run when several items failed at once."""
    found = [e for e in failures.exceptions if isinstance(e, Exception)]
    for kind in (LeaseLostError, RunFailedError, BackendOutageError, WorkerStoppingError):
        for error in found:
            if isinstance(error, kind):
                return error
    return found[0] if found else RuntimeError(str(failures))


class EvalWorker:
    """Takes runs that need an owner, executes them, renews their leases; one per process."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        completions: Completions,
        catalog: PromptCatalog,
        *,
        owner: str | None = None,
        max_runs: int = 4,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.completions = completions
        self.catalog = catalog
        self.owner = owner or f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = timedelta(seconds=settings.eval_lease_seconds)
        self.poll_seconds = settings.eval_poll_seconds
        self.slots = asyncio.Semaphore(settings.eval_max_concurrency)
        self.max_runs = max_runs
        self.outage_backoff = timedelta(seconds=OUTAGE_BACKOFF_SECONDS)
        self.clock = clock
        self.active: dict[int, asyncio.Task[None]] = {}
        self.leases: dict[int, Lease] = {}
        self.stop_wait_seconds = STOP_WAIT_SECONDS
        self._stopping = False
        self._asking: dict[asyncio.Task[Any], Attempt] = {}  # items' tasks in a completion (``_complete``)
        self._charges: set[asyncio.Task[None]] = set()  # completions' charges to their runs under way (``_charge``)

    def jobs(self) -> list[PeriodicJob]:
        return [PeriodicJob("eval-runs", self.poll_seconds, self.poll, shared=True, run_at_shutdown=False)]

    async def poll(self) -> list[int]:
        """Take runs that have no live owner, up to ``max_runs`` at a time; returns the runs taken now."""
        if self._stopping:
            return []
        for run_id in [r for r, task in self.active.items() if task.done()]:
            del self.active[run_id]
            self.leases.pop(run_id, None)
        room = self.max_runs - len(self.active)
        if room <= 0:
            return []
        now = self.clock()

        async def claim(session: AsyncSession) -> list[Lease]:
            repository = EvalRepository(session)
            taken: list[Lease] = []
            for run_id in await repository.claimable(now, room):
                if run_id in self.active:
                    continue
                lease = Lease(run_id, f"{self.owner[:55]}/{uuid.uuid4().hex[:8]}", now + self.lease)
                if await repository.claim(run_id, lease.token, now, lease.expires_at):
                    taken.append(lease)
            return taken

        taken = await self._transaction(claim)
        for lease in taken:
            self.leases[lease.run_id] = lease
            self.active[lease.run_id] = asyncio.create_task(self._own(lease), name=f"eval-run-{lease.run_id}")
        return [lease.run_id for lease in taken]

    async def stop(self) -> None:
        """Stop executing and give the leases up, so another worker takes the runs over at once.

        The completions under way are cancelled (what they spent is charged to their runs); a transaction
        in hand (an item being recorded, a lease renewed) ends. Each run then starts nothing more and releases
        its lease itself (``WorkerStoppingError``); one still running after ``stop_wait_seconds`` is
        cancelled, its transaction in hand rolled back (``in_transaction``), and its lease released here (or
        left to expire, if the database refuses). The charges of completions to their runs are waited for, those
        of a cancelled run too (``_charged``).
        """
        self._stopping = True
        try:
            for task, attempt in self._asking.items():
                attempt.stopping = True
                if attempt.waiting:
                    task.cancel()
            tasks = dict(self.active)
            if not tasks:
                return
            _, overran = await asyncio.wait(tasks.values(), timeout=self.stop_wait_seconds)
            for run_id, task in tasks.items():
                if task in overran:
                    logger.warning("evaluation run still working at stop; cancelled", run=run_id)
                    task.cancel()
            for run_id, task in tasks.items():
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:
                    logger.exception("evaluation run failed at stop", run=run_id)
            await self._charged()
            for run_id, task in tasks.items():
                lease = self.leases.get(run_id)
                if task in overran and lease is not None:
                    try:
                        await self._release(lease, not_before=None)
                    except Exception:
                        logger.exception("could not give up an evaluation run's lease; it expires", run=run_id)
        finally:
            self._stopping = False
            self.active.clear()
            self.leases.clear()

    async def _transaction(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """``work`` in a transaction that a cancellation (the stop's) ends rather than abandons (``in_transaction``)."""
        return await in_transaction(self.sessionmaker, work)

    def _check_stopping(self, run_id: int) -> None:
        if self._stopping:
            raise WorkerStoppingError(f"the worker stops; run {run_id} resumes on another")

    async def _own(self, lease: Lease) -> None:
        """Execute a run while renewing its lease.

        Losing the lease starts no more completions (``_hold``); those under way finish, so that what
        they spent is known and charged to the run, and their outcomes are refused.
        """
        execution = asyncio.create_task(self._execute(lease))
        try:
            while not execution.done():
                done, _ = await asyncio.wait({execution}, timeout=self.lease.total_seconds() / 3)
                if done:
                    break
                if not lease.lost and not await self._renew(lease):
                    logger.warning("lost the lease of an evaluation run", run=lease.run_id, lease=lease.token)
            with contextlib.suppress(asyncio.CancelledError):
                await execution
        finally:
            if not execution.done():
                execution.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await execution

    async def _renew(self, lease: Lease) -> bool:
        """Extend the lease if it is still this claim's; a refusal marks it lost for good."""
        expires = self.clock() + self.lease
        held = await self._transaction(
            lambda session: EvalRepository(session).renew(lease.run_id, lease.token, expires)
        )
        if held:
            lease.expires_at = max(lease.expires_at, expires)
        else:
            lease.lost = True
        return held

    async def _hold(self, lease: Lease) -> None:
        """Before a completion: raise ``LeaseLostError`` if the lease is lost, asking the database first when
        the lease may have run out (this worker stalled), so a worker that was taken over asks nothing more."""
        if not lease.lost and self.clock() + self.lease / 2 >= lease.expires_at:
            await self._renew(lease)
        if lease.lost:
            raise LeaseLostError(f"run {lease.run_id} is no longer held by lease {lease.token}")

    async def _check_run(self, lease: Lease) -> None:
        """Before a completion (and before a run starts): raise ``RunEndedError`` if the run was cancelled or claimed
        anew since, so a cancel stops the completions of items under way too, not only at their next write.

        A run whose key was revoked, has expired (by the worker's clock) or was deleted is cancelled here, saying
        which: the key pays for its completions, and a key the registry no longer lets in spends nothing more.
        Another worker that takes it over is stopped here too, before asking anything.
        """
        run_id = lease.run_id
        standing = await self._transaction(lambda session: EvalRepository(session).standing(run_id))
        ended = standing.key_ended(self.clock()) if standing is not None else None
        if standing is not None and ended is not None and standing.status in PENDING_STATUSES:
            reason = f"cancelled: the API key that started the run {ended}"
            await self._transaction(lambda session: EvalRepository(session).cancel(run_id, self.clock(), error=reason))
            logger.warning(
                "the key of an evaluation run is no longer usable; the run is cancelled", run=run_id, key=ended
            )
            lease.lost = True
            raise RunEndedError(f"run {run_id}: {reason}")
        if standing is None or standing.status not in PENDING_STATUSES:
            lease.lost = True
            raise RunEndedError(f"run {run_id} was cancelled or is gone")
        if standing.lease_owner != lease.token:
            lease.lost = True
            raise LeaseLostError(f"run {run_id} is no longer held by lease {lease.token}")

    async def _release(self, lease: Lease, *, not_before: datetime | None, **values: Any) -> None:
        await self._transaction(
            lambda session: EvalRepository(session).release(lease.run_id, lease.token, not_before=not_before, **values)
        )

    async def _execute(self, lease: Lease) -> None:
        run_id = lease.run_id
        try:
            await self._check_run(lease)
            plan, status = await self._plan(run_id)
            if status == "queued":  # a worker that died validating left it queued: validating again is harmless
                await self._validate(plan, lease)
                self._check_stopping(run_id)
                await self._started(lease)
            await self._score_pending(plan, lease)
            await self._finish(lease, "completed", None)
        except RunEndedError as exc:
            logger.info("the evaluation run ended while it worked", run=run_id, reason=str(exc))
        except LeaseLostError:
            lease.lost = True
            logger.warning("another worker owns the evaluation run now", run=run_id)
        except BackendOutageError as exc:
            # A backend that asked for longer (a 429's Retry-After) is left alone that long, within bounds.
            backoff = max(self.outage_backoff, timedelta(seconds=exc.retry_after or 0.0))
            logger.warning("backend failing; the evaluation run waits", run=run_id, error=error_text(exc))
            await self._release(
                lease,
                not_before=self.clock() + backoff,
                error=f"waiting for the backend: {exc}",
            )
        except RunFailedError as exc:
            await self._finish(lease, "failed", str(exc))
        except WorkerStoppingError:
            await self._release(lease, not_before=None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("evaluation run failed", run=run_id)
            with contextlib.suppress(LeaseLostError):
                await self._finish(lease, "failed", f"{type(exc).__name__}: {exc}")

    async def _started(self, lease: Lease) -> None:
        now = self.clock()
        if not await self._transaction(
            lambda session: EvalRepository(session).renew(
                lease.run_id, lease.token, now + self.lease, status="running", started_at=now
            )
        ):
            raise LeaseLostError(f"run {lease.run_id} is no longer held by lease {lease.token}")
        lease.expires_at = max(lease.expires_at, now + self.lease)

    async def _finish(self, lease: Lease, status: str, error: str | None) -> None:
        async def finish(session: AsyncSession) -> None:
            repository = EvalRepository(session)
            now = self.clock()
            if not await repository.renew(lease.run_id, lease.token, now, status=status, finished_at=now, error=error):
                raise LeaseLostError(f"run {lease.run_id} is no longer held by lease {lease.token}")
            await repository.release(lease.run_id, lease.token, not_before=None)

        await self._transaction(finish)

    async def _plan(self, run_id: int) -> tuple[RunPlan, str]:
        return await self._transaction(lambda session: self._read_plan(session, run_id))

    async def _read_plan(self, session: AsyncSession, run_id: int) -> tuple[RunPlan, str]:
        repository = EvalRepository(session)
        run = await repository.get_run(run_id)
        if run is None:
            raise LeaseLostError(f"run {run_id} is gone")
        specs = parse_scorers(run.scorers)
        rule = parse_pass_rule(run.pass_rule, specs)
        config = await self._linked_config(session, run.config, run.config_version)
        judges: dict[int, JudgeSetup] = {}
        for index, spec in enumerate(specs):
            if isinstance(spec, Judge):
                judge_config = (
                    await self._linked_config(session, spec.config, spec.config_version) if spec.config else None
                )
                judges[index] = JudgeSetup(
                    spec,
                    RunCompletions(
                        self.completions,
                        self.catalog,
                        config=judge_config,
                        response_format=JUDGE_RESPONSE_FORMAT,
                    ),
                )
        status = run.status
        plan = RunPlan(
            run_id=run.id,
            prompt=run.prompt,
            version=run.prompt_version,
            dataset_version_id=run.dataset_version_id,
            caller=Caller(key=run.api_key_id, request_id=f"eval-run-{run.id}"),
            specs=specs,
            rule=rule,
            completions=RunCompletions(self.completions, self.catalog, config=config),
            judges=judges,
            concurrency=run.concurrency,
        )
        return plan, status

    @staticmethod
    async def _items(session: AsyncSession, *, version_id: int, after: int, limit: int) -> Sequence[EvalDatasetItem]:
        return await EvalRepository(session).items(version_id, after=after, limit=limit)

    @staticmethod
    async def _pending_items(session: AsyncSession, *, run: EvalRun, after: int) -> Sequence[EvalDatasetItem]:
        return await EvalRepository(session).pending_items(run, after=after, limit=BATCH)

    @staticmethod
    async def _linked_config(session: AsyncSession, name: str, number: int | None) -> LinkedConfig | None:
        repository = ConfigRepository(session)
        config = await repository.get_resource(name)
        if config is None:
            raise RunFailedError(f"config '{name}' no longer exists")
        number = number or config.latest_version
        version = await repository.get_version(config.id, number)
        if version is None:
            raise RunFailedError(f"config '{name}' has no version {number}")
        return LinkedConfig.of(version)

    async def _validate(self, plan: RunPlan, lease: Lease) -> None:
        """Check every item's variables against the prompt's input schema now; invalid ones are recorded."""
        resolution = await self.catalog.resolve(plan.prompt, version=plan.version)
        compiled = resolution.version.compiled
        after = 0
        while True:
            self._check_stopping(plan.run_id)
            items = await self._transaction(
                functools.partial(self._items, version_id=plan.dataset_version_id, after=after, limit=2000)
            )
            if not items:
                return
            rows = []
            for item in items:
                try:
                    compiled.validate(item.variables)
                except ValueError as exc:
                    detail = getattr(exc, "detail", str(exc))
                    rows.append(_error_row(item.position, "invalid", f"variables invalid: {detail}", plan.specs))
            await self._record(lease, rows)
            after = items[-1].position

    async def _record(self, lease: Lease, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            await self._transaction(
                lambda session: EvalRepository(session).record_items(lease.run_id, lease.token, rows)
            )
        except LeaseLostError:
            lease.lost = True
            raise

    async def _charge(self, lease: Lease, attempt: Attempt) -> None:
        """What the attempt's completions spent since the run was last charged for it, added to the run's cost
        as each completion ends, whoever holds the lease then (see the module's text), and to its pending spend
        while ``lease`` holds the run (until the item's outcome is stored or the attempt given up: ``_settle``).

        The charge is a task of its own, which the stop waits for (``_charged``): it may wait for the database
        (SQLite's one connection, or the run's row, which an item being stored holds) while the stop cancels its
        run, and a cancelled charge would be lost, its transaction rolled back.
        """
        spend = attempt.take_unbilled()
        if not spend:
            return
        run_id = lease.run_id
        charge = asyncio.create_task(
            self._transaction(
                lambda session: EvalRepository(session).charge(
                    run_id,
                    lease.token,
                    cost=spend.cost,
                    input_tokens=spend.input_tokens,
                    output_tokens=spend.output_tokens,
                )
            ),
            name=f"eval-run-{run_id}-charge",
        )
        self._charges.add(charge)
        charge.add_done_callback(self._charges.discard)
        await asyncio.shield(charge)

    async def _settle(self, lease: Lease, attempt: Attempt) -> None:
        """The attempt is given up without an outcome: what it spent (charged already) is no longer pending but
        discarded. Nothing when the lease is lost: the new owner's claim, or the cancellation, ended that."""
        if lease.lost:
            return
        await self._transaction(
            lambda session: EvalRepository(session).settle(
                lease.run_id,
                lease.token,
                cost=attempt.cost,
                input_tokens=attempt.input_tokens,
                output_tokens=attempt.output_tokens,
            )
        )

    async def _charged(self) -> None:
        """Wait for the charges of completions to their runs still under way, whose runs may have been cancelled."""
        charges = list(self._charges)
        for charge, outcome in zip(charges, await asyncio.gather(*charges, return_exceptions=True), strict=True):
            if isinstance(outcome, Exception):
                logger.error("could not charge a completion to its run", charge=charge.get_name(), exc_info=outcome)

    async def _score_pending(self, plan: RunPlan, lease: Lease) -> None:
        run_slots = asyncio.Semaphore(plan.concurrency)
        # What stops the run (an outage, the budget, a lost lease or the worker stopping): items already
        # asked still finish (and are recorded while the lease holds), since their completions were made
        # and charged; no more are started. What an attempt stopped after some of its completions, or whose
        # outcome is refused, spent was charged to the run as its completions ended (``_complete``).
        stopped: list[Exception] = []

        async def one(item: EvalDatasetItem) -> None:
            async with run_slots:
                if stopped or self._stopping:
                    return
                attempt = Attempt()
                try:
                    async with self.slots:
                        row = await self._score_item(plan, lease, item, attempt)
                    # Recorded before the run's slot is free: a lost lease or a cancellation stops the next item.
                    await self._record(lease, [row])
                except (BackendOutageError, RunFailedError, LeaseLostError, WorkerStoppingError) as exc:
                    stopped.append(exc)
                    if attempt.completions:
                        logger.warning(
                            "an evaluation item's attempt was discarded; its cost is in the run's",
                            run=plan.run_id,
                            completions=attempt.completions,
                            cost=attempt.cost,
                        )
                        await self._settle(lease, attempt)

        after = 0
        while True:
            self._check_stopping(plan.run_id)
            run = EvalRun(id=plan.run_id, dataset_version_id=plan.dataset_version_id)
            items = await self._transaction(functools.partial(self._pending_items, run=run, after=after))
            if not items:
                return
            try:
                async with asyncio.TaskGroup() as group:
                    for item in items:
                        group.create_task(one(item))
            except ExceptionGroup as failures:
                raise _decisive(failures) from None
            if stopped:
                raise _decisive(ExceptionGroup("the run stopped", stopped))
            after = items[-1].position

    async def _complete(
        self,
        completions: RunCompletions,
        prompt: str,
        request: CompleteRequest,
        caller: Caller,
        *,
        lease: Lease,
        attempt: Attempt,
    ) -> CompletionOut:
        """One completion, only while the lease holds and the worker is not stopping; what it spent goes to
        ``attempt`` (``RunCompletions``) and to the run's cost as it ends, answered or not (``_charge``). A stop
        cancels it while it waits on the backend (``backend_wait``).

        Backend failures the run waits out are told apart from an item's own problem.
        """
        await self._hold(lease)
        await self._check_run(lease)
        # Nothing awaited from here to the registration below: a stop that came while the run was read (above)
        # is seen here, and one that comes after finds the completion to cancel.
        self._check_stopping(lease.run_id)
        task = asyncio.current_task()
        assert task is not None
        self._asking[task] = attempt
        spending = _attempt.set(attempt)
        try:
            out = await self._complete_within_budget(completions, prompt, request, caller)
        except UpstreamBadRequestError:
            raise
        except BackendNotConfiguredError as exc:
            raise RunFailedError(exc.detail) from exc
        except RECORDED_ERRORS as exc:
            raise BackendOutageError(exc.detail, retry_after=retry_after(exc)) from exc
        except RegistryError as exc:
            if exc.type == "over_budget":
                raise RunFailedError(f"the key that started the run is over its budget: {exc.detail}") from exc
            raise
        finally:
            _attempt.reset(spending)
            del self._asking[task]
            await self._charge(lease, attempt)
        return out

    @staticmethod
    async def _complete_within_budget(
        completions: RunCompletions, prompt: str, request: CompleteRequest, caller: Caller
    ) -> CompletionOut:
        """The completion, once the run's own completions in flight leave room for it in its key's budget: each
        holds the most it may spend until recorded, which near the limit refuses the next (``BudgetHeldError``)
        long before the run's answers spend it. The run waits for one to end rather than fail."""
        while True:
            try:
                return await completions.complete(prompt, request, caller)
            except BudgetHeldError:
                assert caller.key is not None  # only a key with a budget is refused
                await completions.completions.budgets.released(caller.key)

    async def _score_item(self, plan: RunPlan, lease: Lease, item: EvalDatasetItem, attempt: Attempt) -> dict[str, Any]:
        request = CompleteRequest(variables=item.variables, version=plan.version)
        try:
            out = await self._complete(
                plan.completions, plan.prompt, request, plan.caller, lease=lease, attempt=attempt
            )
        except (BackendOutageError, RunFailedError):
            raise
        except RegistryError as exc:
            status = "invalid" if exc.type == "variables_invalid" else "error"
            row = _error_row(item.position, status, f"{exc.type}: {exc.detail}", plan.specs)
            # What the failed completion spent (a blocked answer's tokens) is the stored outcome's cost.
            row.update(input_tokens=attempt.input_tokens, output_tokens=attempt.output_tokens, cost=attempt.cost)
            return row
        # A cached answer's latency is the cache's and its cost nothing: latency and cost scorers would pass on
        # what no model did, so they are not given them (the cached answer's tokens are the model's).
        measured = not out.cached
        inp = ScoreInput(
            output=out.text,
            expected=item.expected,
            variables=item.variables,
            latency_ms=out.latency_ms if measured else None,
            ttft_ms=out.ttft_ms if measured else None,
            input_tokens=out.usage.input_tokens,
            output_tokens=out.usage.output_tokens,
            cost=out.cost if measured else None,
            cached=not measured,
        )
        scores: list[dict[str, Any]] = []
        results: list[Score] = []
        scorer_errors: list[str] = []
        for index, spec in enumerate(plan.specs):
            setup = plan.judges.get(index)
            if setup is None:
                result = score(spec, inp)
                scores.append(_score_out(spec, result))
            else:
                result, judge, failure = await self._judge(setup, plan, lease, item, out, attempt)
                scores.append(_score_out(spec, result, judge, error=failure))
                if failure is not None:
                    scorer_errors.append(f"{spec.name or spec.kind}: {failure}")
            results.append(result)
        verdict = combine(plan.specs, results, plan.rule)
        # A scorer that failed for its own reasons says nothing of the output: the item is neither passed nor failed.
        return {
            "position": item.position,
            "status": "scorer_error" if scorer_errors else "scored",
            "output": out.text,
            "scores": scores,
            "score": None if scorer_errors else verdict.score,
            "passed": verdict.passed and not scorer_errors,
            "error": "; ".join(scorer_errors) if scorer_errors else None,
            "latency_ms": out.latency_ms,
            "input_tokens": attempt.input_tokens,
            "output_tokens": attempt.output_tokens,
            "cost": attempt.cost,
            "cached": out.cached,
            "fallback_used": out.fallback_used,
            "created_at": utcnow(),
        }

    async def _judge(
        self,
        setup: JudgeSetup,
        plan: RunPlan,
        lease: Lease,
        item: EvalDatasetItem,
        out: CompletionOut,
        attempt: Attempt,
    ) -> tuple[Score, dict[str, Any], str | None]:
        """Ask the judge prompt for ``{"score", "reason"}`` about the output; the score records which judge.

        The third part is the judge's own failure, if it failed (its request refused, an answer that is no verdict):
        that is no verdict on the output, and the item's outcome says so (``scorer_error``). A backend outage is
        not: the run waits for it (``BackendOutageError``)."""
        spec = setup.spec
        label = None if spec.version is not None else (spec.label or "production")
        offered = {"output": out.text, "expected": item.expected, "variables": item.variables}
        try:
            # The judge gets those of the output, the expected output and the item's variables its template uses.
            judge_version = await self.catalog.resolve(spec.prompt, version=spec.version, label=label)
            used = set(judge_version.version.compiled.variables)
            request = CompleteRequest(
                variables={name: value for name, value in offered.items() if name in used},
                version=spec.version,
                label=label,  # type: ignore[arg-type]
            )
            answer = await self._complete(
                setup.completions, spec.prompt, request, plan.caller, lease=lease, attempt=attempt
            )
        except (BackendOutageError, RunFailedError):
            raise
        except RegistryError as exc:
            failure = f"the judge failed: {exc.type}: {exc.detail}"
            return Score(0.0, False, failure), {"prompt": spec.prompt}, failure
        judge = {
            "prompt": answer.prompt,
            "version": answer.version,
            "config": answer.config.name,
            "config_version": answer.config.version,
        }
        judgement = parse_judgement(answer.text)
        if judgement is None:
            failure = f"the judge's answer is not a score and reason: {answer.text[:200]!r}"
            return Score(0.0, False, failure), judge, failure
        return judge_score(spec, *judgement), judge, None
