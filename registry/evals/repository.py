"""All SQL of the evaluations domain: datasets and their items, runs, leases, scored items, gates."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import and_, case, exists, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.models import ApiKey
from registry.db.text import without_nul
from registry.evals.models import EvalDataset, EvalDatasetItem, EvalDatasetVersion, EvalGate, EvalRun, EvalRunItem
from registry.lib.pagination import PageRequest
from registry.prompts.models import PromptVersion

# Items go to PostgreSQL as one JSON document per chunk, unpacked by the server: a multi-row VALUES costs
# SQLAlchemy several microseconds of Python per row, which for 100,000 items is seconds on the event loop.
_INSERT_ITEMS_POSTGRESQL = text(
    "INSERT INTO eval_dataset_items (version_id, position, variables, expected, tags, metadata) "
    "SELECT :version_id, r.position, r.variables, r.expected, r.tags, r.metadata "
    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) "
    "AS r(position integer, variables jsonb, expected text, tags jsonb, metadata jsonb)"
)
ITEM_CHUNK = 10_000
PENDING_STATUSES = ("queued", "running")
Outcome = tuple[int, bool, float | None, str]  # an item's position, passed, score and status
# A lease taken, given up or ended: no attempt of its owner is under way any more (see ``EvalRun.pending_cost``).
_NOTHING_PENDING: dict[str, Any] = {"pending_cost": 0.0, "pending_input_tokens": 0, "pending_output_tokens": 0}


class RunStanding(NamedTuple):
    status: str
    lease_owner: str | None
    api_key_id: str | None  # the key that started the run and pays for it; None: started without one
    key_exists: bool
    key_revoked_at: datetime | None
    key_expires_at: datetime | None

    def key_ended(self, now: datetime) -> str | None:
        """Why the run's key may spend nothing more at ``now`` (it was revoked, expired or deleted: what the
        key verifier refuses a request for), or None while it may."""
        if self.api_key_id is None:
            return None
        if not self.key_exists:
            return "was deleted"
        if self.key_revoked_at is not None:
            return "was revoked"
        if self.key_expires_at is not None and self.key_expires_at <= now:
            return f"expired at {self.key_expires_at.isoformat()}"
        return None


class LeaseLostError(Exception):
    """Another claim owns the run now (or it was cancelled): what this one was about to write is dropped."""


class EvalRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def is_postgresql(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    def _insert(self, model: Any) -> Any:
        table = model.__table__
        return postgresql_insert(table) if self.is_postgresql else sqlite_insert(table)

    async def add(self, row: Any) -> None:
        self.session.add(row)
        await self.session.flush()

    # -- datasets

    async def get_dataset(self, name: str, *, for_update: bool = False) -> EvalDataset | None:
        query = select(EvalDataset).where(EvalDataset.name == name)
        if for_update:
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def dataset_exists(self, name: str) -> bool:
        return bool(await self.session.scalar(select(exists().where(EvalDataset.name == name))))

    async def list_datasets(self, page: PageRequest, *, prefix: str | None) -> Sequence[EvalDataset]:
        query = select(EvalDataset).order_by(EvalDataset.name).limit(page.limit + 1)
        if page.after is not None:
            query = query.where(EvalDataset.name > page.after_text)
        if prefix:
            query = query.where(EvalDataset.name.startswith(prefix, autoescape=True))
        return (await self.session.scalars(query)).all()

    async def get_version(self, dataset_id: int, number: int) -> EvalDatasetVersion | None:
        query = select(EvalDatasetVersion).where(
            EvalDatasetVersion.dataset_id == dataset_id, EvalDatasetVersion.number == number
        )
        return (await self.session.execute(query)).scalar_one_or_none()

    async def version_by_id(self, version_id: int) -> EvalDatasetVersion | None:
        return await self.session.get(EvalDatasetVersion, version_id)

    async def list_versions(self, dataset_id: int, page: PageRequest) -> Sequence[EvalDatasetVersion]:
        query = (
            select(EvalDatasetVersion)
            .where(EvalDatasetVersion.dataset_id == dataset_id)
            .order_by(EvalDatasetVersion.number.desc())
            .limit(page.limit + 1)
        )
        if page.after is not None:
            query = query.where(EvalDatasetVersion.number < page.after_number)
        return (await self.session.scalars(query)).all()

    async def insert_items(self, version_id: int, rows: Sequence[dict[str, Any]]) -> None:
        """Rows carry ``position``, ``variables``, ``expected``, ``tags`` and ``metadata``."""
        for start in range(0, len(rows), ITEM_CHUNK):
            chunk = rows[start : start + ITEM_CHUNK]
            if self.is_postgresql:
                document = msgspec.json.encode(chunk).decode()
                await self.session.execute(_INSERT_ITEMS_POSTGRESQL, {"version_id": version_id, "rows": document})
            else:
                await self.session.execute(
                    self._insert(EvalDatasetItem),
                    [{**row, "version_id": version_id, "item_metadata": row["metadata"]} for row in chunk],
                )

    async def items(self, version_id: int, *, after: int, limit: int) -> Sequence[EvalDatasetItem]:
        query = (
            select(EvalDatasetItem)
            .where(EvalDatasetItem.version_id == version_id, EvalDatasetItem.position > after)
            .order_by(EvalDatasetItem.position)
            .limit(limit)
        )
        return (await self.session.scalars(query)).all()

    async def all_items(self, version_id: int, *, batch: int = 2000) -> AsyncIterator[Sequence[EvalDatasetItem]]:
        after = 0
        while True:
            rows = await self.items(version_id, after=after, limit=batch)
            if not rows:
                return
            yield rows
            after = rows[-1].position

    # -- runs

    async def get_run(self, run_id: int) -> EvalRun | None:
        return await self.session.get(EvalRun, run_id, populate_existing=True)

    async def list_runs(self, page: PageRequest, *, prompt: str | None, status: str | None = None) -> Sequence[EvalRun]:
        query = select(EvalRun).order_by(EvalRun.id.desc()).limit(page.limit + 1)
        if page.after is not None:
            query = query.where(EvalRun.id < page.after_number)
        if prompt:
            query = query.where(EvalRun.prompt == prompt)
        if status:
            query = query.where(EvalRun.status == status)
        return (await self.session.scalars(query)).all()

    async def claimable(self, now: datetime, limit: int) -> list[int]:
        """Runs waiting for an owner: queued ones, and running ones whose owner's lease expired."""
        query = (
            select(EvalRun.id)
            .where(
                EvalRun.status.in_(PENDING_STATUSES),
                or_(EvalRun.lease_expires_at.is_(None), EvalRun.lease_expires_at < now),
            )
            .order_by(EvalRun.id)
            .limit(limit)
        )
        return list((await self.session.scalars(query)).all())

    async def claim(self, run_id: int, lease: str, now: datetime, expires: datetime) -> bool:
        """Take the lease if nobody holds a live one; one statement, so two workers cannot both win.

        ``lease`` is a token new to this claim (the worker's name and a random part): every later write
        of the run is conditional on it, so a worker whose lease was taken over, even by itself, writes nothing.
        What the previous owner's attempts spent is no longer pending: their outcomes would be refused now.
        """
        result = await self.session.execute(
            update(EvalRun)
            .where(
                EvalRun.id == run_id,
                EvalRun.status.in_(PENDING_STATUSES),
                or_(EvalRun.lease_expires_at.is_(None), EvalRun.lease_expires_at < now),
            )
            .values(lease_owner=lease, lease_expires_at=expires, **_NOTHING_PENDING)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def renew(self, run_id: int, lease: str, expires: datetime, **values: Any) -> bool:
        """Extend the lease while it is ``lease``, writing ``values`` too (a run's error is stored as
        ``record_items`` stores an outcome's: it may quote a backend's or the model's text)."""
        result = await self.session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id, EvalRun.lease_owner == lease, EvalRun.status.in_(PENDING_STATUSES))
            .values(lease_expires_at=expires, **without_nul(values))
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, run_id: int, lease: str, *, not_before: datetime | None, **values: Any) -> bool:
        """Give the lease up; ``not_before`` keeps other workers off the run until then (a backend outage).
        ``values`` are written as ``renew`` writes them. The owner has no attempt under way any more."""
        result = await self.session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id, EvalRun.lease_owner == lease)
            .values(lease_owner=None, lease_expires_at=not_before, **_NOTHING_PENDING, **without_nul(values))
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def pending_items(self, run: EvalRun, *, after: int, limit: int) -> Sequence[EvalDatasetItem]:
        """The run's dataset items that have no outcome yet, in order."""
        done = exists().where(EvalRunItem.run_id == run.id, EvalRunItem.position == EvalDatasetItem.position)
        query = (
            select(EvalDatasetItem)
            .where(EvalDatasetItem.version_id == run.dataset_version_id, EvalDatasetItem.position > after, ~done)
            .order_by(EvalDatasetItem.position)
            .limit(limit)
        )
        return (await self.session.scalars(query)).all()

    async def record_items(self, run_id: int, lease: str, rows: Sequence[dict[str, Any]]) -> int:
        """Store outcomes not stored yet and add them to the run's counters, while ``lease`` is the run's.

        The primary key (run, position) drops an outcome already stored, so an item is counted
        once however often a resumed run reaches it. The run's cost and tokens are not added to here: each
        completion's were as it ended (``charge``), so what a worker killed before the outcome's write spent is
        in them. Raises ``LeaseLostError`` (the caller rolls back, so the outcomes are not stored either) when
        the run was claimed anew or cancelled.

        Each row's attempt is no longer under way: what it spent (the row's cost and tokens) leaves the run's
        pending spend, stored with the outcome, or discarded when the item was stored already.

        An outcome's text holds the model's answer and what scorers and judges said of it, which cannot be refused:
        a NUL in it is stored as U+FFFD (``registry.db.text``), else the run would fail on it.
        """
        if not rows:
            return 0
        rows = [without_nul(row) for row in rows]
        inserted = (
            await self.session.execute(
                self._insert(EvalRunItem).on_conflict_do_nothing().returning(EvalRunItem.position),
                [{**row, "run_id": run_id} for row in rows],
            )
        ).all()
        positions = {row[0] for row in inserted}
        new = [row for row in rows if row["position"] in positions]
        result = await self.session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id, EvalRun.lease_owner == lease, EvalRun.status.in_(PENDING_STATUSES))
            .values(
                items_done=EvalRun.items_done + len(new),
                items_passed=EvalRun.items_passed + sum(1 for r in new if r["passed"]),
                items_invalid=EvalRun.items_invalid + sum(1 for r in new if r["status"] == "invalid"),
                items_errored=EvalRun.items_errored + sum(1 for r in new if r["status"] == "error"),
                items_scorer_errors=EvalRun.items_scorer_errors + sum(1 for r in new if r["status"] == "scorer_error"),
                pending_cost=EvalRun.pending_cost - sum(r.get("cost", 0.0) for r in rows),
                pending_input_tokens=EvalRun.pending_input_tokens - sum(r.get("input_tokens", 0) for r in rows),
                pending_output_tokens=EvalRun.pending_output_tokens - sum(r.get("output_tokens", 0) for r in rows),
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise LeaseLostError(f"run {run_id} is no longer held by lease {lease}, or was cancelled")
        return len(new)

    async def charge(self, run_id: int, lease: str, *, cost: float, input_tokens: int, output_tokens: int) -> None:
        """Add what a completion of the run spent to the run's cost as it ends, whoever holds the lease.

        Not fenced: the completion was made and charged to the key, whatever becomes of its item's outcome,
        so the run's cost says what the run spent, not only what its stored items cost. While ``lease`` still
        holds the run, its attempt is under way, so it is pending too (until ``record_items`` or ``settle``);
        a completion of a lease taken over or ended is discarded at once.
        """
        held = and_(EvalRun.lease_owner == lease, EvalRun.status.in_(PENDING_STATUSES))

        def pending(amount: float) -> Any:
            return case((held, amount), else_=0)

        await self.session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id)
            .values(
                cost=EvalRun.cost + cost,
                input_tokens=EvalRun.input_tokens + input_tokens,
                output_tokens=EvalRun.output_tokens + output_tokens,
                pending_cost=EvalRun.pending_cost + pending(cost),
                pending_input_tokens=EvalRun.pending_input_tokens + pending(input_tokens),
                pending_output_tokens=EvalRun.pending_output_tokens + pending(output_tokens),
            )
        )

    async def settle(self, run_id: int, lease: str, *, cost: float, input_tokens: int, output_tokens: int) -> None:
        """An attempt of ``lease`` given up without an outcome: what it spent is no longer pending (it is discarded).
        Nothing when the lease no longer holds the run: its attempts stopped being pending when it ended."""
        await self.session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id, EvalRun.lease_owner == lease)
            .values(
                pending_cost=EvalRun.pending_cost - cost,
                pending_input_tokens=EvalRun.pending_input_tokens - input_tokens,
                pending_output_tokens=EvalRun.pending_output_tokens - output_tokens,
            )
        )

    async def standing(self, run_id: int) -> RunStanding | None:
        """Whether the run may go on: its status, its lease's owner, and the key that started it (and is charged
        for it) as it is now: revoked, expiring or deleted since (``RunStanding.key_ended``). None when the run is
        gone."""
        query = (
            select(
                EvalRun.status,
                EvalRun.lease_owner,
                EvalRun.api_key_id,
                ApiKey.id.is_not(None),
                ApiKey.revoked_at,
                ApiKey.expires_at,
            )
            .outerjoin(ApiKey, ApiKey.public_id == EvalRun.api_key_id)
            .where(EvalRun.id == run_id)
        )
        row = (await self.session.execute(query)).one_or_none()
        if row is None:
            return None
        status, lease_owner, api_key_id, key_exists, revoked_at, expires_at = row
        return RunStanding(status, lease_owner, api_key_id, bool(key_exists), revoked_at, expires_at)

    async def cancel(self, run_id: int, now: datetime, *, error: str | None = None) -> bool:
        """End a run that has not finished (``error``: why, when it was not asked for); its owner stops before its
        next completion (``EvalWorker._check_run``) or at its next write."""
        values: dict[str, Any] = {"error": error} if error is not None else {}
        result = await self.session.execute(
            update(EvalRun)
            .where(EvalRun.id == run_id, EvalRun.status.in_(PENDING_STATUSES))
            .values(
                status="cancelled",
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
                **_NOTHING_PENDING,
                **values,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def run_items(self, run_id: int, page: PageRequest, *, failed_only: bool) -> Sequence[EvalRunItem]:
        query = select(EvalRunItem).where(EvalRunItem.run_id == run_id).order_by(EvalRunItem.position)
        if page.after is not None:
            query = query.where(EvalRunItem.position > page.after_number)
        if failed_only:
            query = query.where(EvalRunItem.passed.is_(False))
        return (await self.session.scalars(query.limit(page.limit + 1))).all()

    async def run_items_at(self, run_id: int, positions: Sequence[int]) -> Sequence[EvalRunItem]:
        """The run's items at these dataset positions, in order."""
        if not positions:
            return []
        query = (
            select(EvalRunItem)
            .where(EvalRunItem.run_id == run_id, EvalRunItem.position.in_(positions))
            .order_by(EvalRunItem.position)
        )
        return (await self.session.scalars(query)).all()

    async def run_and_discarded(self, run_id: int) -> tuple[EvalRun, tuple[float, int, int]] | None:
        """The run, and what its attempts given up spent: (cost, input tokens, output tokens).

        That is the run's cost less what its stored outcomes cost and what its owner's attempts still under way
        spent (pending). One statement, so the run's figures and its stored outcomes are read at one moment: read
        apart, an outcome stored in between was counted as stored but still pending, or the other way round.
        """

        def stored(column: Any) -> Any:
            return (
                select(func.coalesce(func.sum(column), 0))
                .where(EvalRunItem.run_id == EvalRun.id)
                .correlate(EvalRun)
                .scalar_subquery()
            )

        query = (
            select(
                EvalRun,
                stored(EvalRunItem.cost),
                stored(EvalRunItem.input_tokens),
                stored(EvalRunItem.output_tokens),
            )
            .where(EvalRun.id == run_id)
            .execution_options(populate_existing=True)
        )
        row = (await self.session.execute(query)).one_or_none()
        if row is None:
            return None
        run, cost, input_tokens, output_tokens = row
        return run, (
            float(run.cost) - float(cost) - float(run.pending_cost),
            int(run.input_tokens) - int(input_tokens) - int(run.pending_input_tokens),
            int(run.output_tokens) - int(output_tokens) - int(run.pending_output_tokens),
        )

    async def item_scores(self, run_id: int) -> list[list[dict[str, Any]]]:
        """Every item's scores (each scorer's name, kind, value, passed), without outputs: per-scorer rates."""
        query = select(EvalRunItem.scores).where(EvalRunItem.run_id == run_id).order_by(EvalRunItem.position)
        return [list(scores) for scores in (await self.session.scalars(query)).all()]

    async def outcomes(self, run_id: int) -> list[Outcome]:
        """Every item's (position, passed, score, status), in order: what the statistics need."""
        query = (
            select(EvalRunItem.position, EvalRunItem.passed, EvalRunItem.score, EvalRunItem.status)
            .where(EvalRunItem.run_id == run_id)
            .order_by(EvalRunItem.position)
        )
        return [(p, bool(ok), s, st) for p, ok, s, st in (await self.session.execute(query)).all()]

    async def fallback_answers(self, run_id: int) -> int:
        """How many of the run's items its config's fallback answered."""
        query = select(func.count()).where(EvalRunItem.run_id == run_id, EvalRunItem.fallback_used.is_(True))
        return int((await self.session.execute(query)).scalar_one())

    async def completed_run_scorings(
        self,
        *,
        prompt: str,
        versions: Sequence[int],
        config: str | None,
        config_version: int | None,
        dataset_version_id: int,
    ) -> list[tuple[int, list[dict[str, Any]], dict[str, Any] | None]]:
        """Every completed run of any of ``versions`` on the dataset version (with exactly that config version,
        or any config when ``config`` is None), newest first, as (id, scorers, pass rule): a gate takes the
        newest one scored as it asks."""
        conditions = [
            EvalRun.prompt == prompt,
            EvalRun.prompt_version.in_(versions),
            EvalRun.dataset_version_id == dataset_version_id,
            EvalRun.status == "completed",
        ]
        if config is not None:
            conditions += [EvalRun.config == config, EvalRun.config_version == config_version]
        query = (
            select(EvalRun.id, EvalRun.scorers, EvalRun.pass_rule).where(and_(*conditions)).order_by(EvalRun.id.desc())
        )
        return [(run_id, list(scorers), rule) for run_id, scorers, rule in (await self.session.execute(query)).all()]

    async def versions_alike(self, version: PromptVersion) -> list[PromptVersion]:
        """The prompt's other versions of the same kind and template: those whose messages and input schema
        match too render exactly as ``version`` does (the caller compares those, as JSON)."""
        template = PromptVersion.template
        same_template = template.is_(None) if version.template is None else template == version.template
        query = (
            select(PromptVersion)
            .where(
                PromptVersion.prompt_id == version.prompt_id,
                PromptVersion.id != version.id,
                PromptVersion.kind == version.kind,
                same_template,
            )
            .order_by(PromptVersion.number)
        )
        return list((await self.session.execute(query)).scalars())

    # -- gates

    async def get_gate(self, prompt_id: int, state: str) -> EvalGate | None:
        query = select(EvalGate).where(EvalGate.prompt_id == prompt_id, EvalGate.state == state)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def count_items(self, version_id: int) -> int:
        return int(
            await self.session.scalar(
                select(func.count()).select_from(EvalDatasetItem).where(EvalDatasetItem.version_id == version_id)
            )
            or 0
        )
