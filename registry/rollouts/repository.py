"""SQL of rollouts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from registry.prompts.models import Prompt
from registry.rollouts.models import ACTIVE_STATUSES, Rollout, RolloutEvent


def _loaded() -> tuple[object, ...]:
    return (selectinload(Rollout.prompt), selectinload(Rollout.experiment))


class RolloutLeaseLostError(Exception):
    """Another claim holds the rollout's lease now (or it ended): the check that found it out changes nothing."""


class RolloutRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: Rollout | RolloutEvent) -> None:
        self.session.add(row)
        await self.session.flush()

    async def get(self, rollout_id: int, *, for_update: bool = False) -> Rollout | None:
        query = select(Rollout).where(Rollout.id == rollout_id).options(*_loaded())  # type: ignore[arg-type]
        if for_update:
            query = query.with_for_update(of=Rollout)
        return (await self.session.execute(query)).scalar_one_or_none()

    async def active_for_prompt(self, prompt_name: str) -> Rollout | None:
        query = (
            select(Rollout)
            .join(Prompt, Prompt.id == Rollout.prompt_id)
            .where(Prompt.name == prompt_name, Rollout.status.in_(ACTIVE_STATUSES))
            .options(*_loaded())  # type: ignore[arg-type]
        )
        return (await self.session.execute(query.limit(1))).scalar_one_or_none()

    async def for_prompt(self, prompt_id: int, limit: int, *, before: int | None = None) -> Sequence[Rollout]:
        """The prompt's rollouts newest first, at most ``limit``, those older than rollout ``before`` if given."""
        query = (
            select(Rollout)
            .where(Rollout.prompt_id == prompt_id)
            .order_by(Rollout.id.desc())
            .limit(limit)
            .options(*_loaded())  # type: ignore[arg-type]
        )
        if before is not None:
            query = query.where(Rollout.id < before)
        return (await self.session.execute(query)).scalars().all()

    async def running_ids(self) -> Sequence[int]:
        return (await self.session.execute(select(Rollout.id).where(Rollout.status == "running"))).scalars().all()

    async def claim(self, rollout_id: int, lease: str, now: datetime, until: datetime) -> bool:
        """Take the rollout's lease if nobody holds a live one (one checker across replicas).

        ``lease`` is a token new to this claim (the checker's name and a random part), so a live lease is
        never taken again, not even by a checker of the same name; the check's transaction renews it
        (``renew``) before it changes anything.
        """
        statement = (
            update(Rollout)
            .where(
                Rollout.id == rollout_id,
                Rollout.status == "running",
                or_(Rollout.lease_owner.is_(None), Rollout.lease_expires_at < now),
            )
            .values(lease_owner=lease, lease_expires_at=until)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def renew(self, rollout_id: int, lease: str, until: datetime) -> bool:
        """Extend the lease if it is still this claim's: the fence of the check's transaction.

        On PostgreSQL the UPDATE also locks the row until the check commits, so no claim can come between
        this and what the check writes; false when another claim took the rollout over (or it ended).
        """
        statement = (
            update(Rollout)
            .where(Rollout.id == rollout_id, Rollout.lease_owner == lease)
            .values(lease_expires_at=until)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(statement)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def events(self, rollout_id: int) -> Sequence[RolloutEvent]:
        query = select(RolloutEvent).where(RolloutEvent.rollout_id == rollout_id).order_by(RolloutEvent.id)
        return (await self.session.execute(query)).scalars().all()
