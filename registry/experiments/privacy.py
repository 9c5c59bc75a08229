"""A unit's data: everything held on it (access requests) and its erasure everywhere.

Besides the experiments' facts, that includes the semantic cache entries that answered the unit's requests
(they carry the unit's digest, never the unit).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.completions.semantic_repository import SemanticCacheRepository
from registry.experiments.aggregator import UnitRecomputer
from registry.experiments.errors import UnitNotFoundError
from registry.experiments.repository import StatisticsRepository, UnitDataRepository
from registry.experiments.router import UNIT_ERASED
from registry.experiments.schemas import (
    UnitCachedAnswerOut,
    UnitDataOut,
    UnitErasedOut,
    UnitEventOut,
    UnitExposureOut,
    UnitMetricOut,
    UnitStandingOut,
)
from registry.experiments.sources import ObservationSource
from registry.lib.changes import Change, record_change


def unit_digest(unit: str) -> str:
    """How the audit log names an erased unit: a digest, so the log does not keep what was erased."""
    return "sha256:" + hashlib.sha256(unit.encode()).hexdigest()[:32]


class UnitDataService:
    def __init__(self, session: AsyncSession, sources: Mapping[str, ObservationSource], *, grace: timedelta) -> None:
        self.session = session
        self.repository = UnitDataRepository(session)
        self.statistics = StatisticsRepository(session)
        self.recomputer = UnitRecomputer(session, sources, grace=grace)
        self.audit = AuditLog(session)
        self.semantic_cache = SemanticCacheRepository(session)

    async def describe(self, unit: str, *, pending_exposures: int) -> UnitDataOut:
        exposures = await self.repository.exposures(unit)
        events = await self.repository.events(unit)
        standings = await self.repository.standings(unit)
        cached = await self.semantic_cache.entries_of_unit(unit_digest(unit))
        if not exposures and not events and not standings and not pending_exposures and not cached:
            raise UnitNotFoundError("the service holds no data on this unit")
        values: dict[tuple[int, int], list[UnitMetricOut]] = {}
        for experiment_id, phase, metric, value, pre in await self.repository.metric_values(unit):
            values.setdefault((experiment_id, phase), []).append(
                UnitMetricOut(metric=metric, value=value, pre_exposure_value=pre)
            )
        return UnitDataOut(
            unit=unit,
            exposures=[
                UnitExposureOut(experiment=key, phase=phase, variant=variant, exposed_at=at)
                for key, phase, variant, at in exposures
            ],
            events=[
                UnitEventOut(
                    metric=metric,
                    value=value,
                    timestamp=occurred_at,
                    idempotency_key=idempotency_key,
                    experiment=experiment,
                    received_at=received_at,
                )
                for metric, value, occurred_at, idempotency_key, experiment, received_at in events
            ],
            experiments=[
                UnitStandingOut(
                    experiment=key,
                    phase=phase,
                    variant=variant,
                    first_exposed_at=first,
                    metrics=values.get((experiment_id, phase), []),
                )
                for experiment_id, key, phase, variant, first in standings
            ],
            pending_exposures=pending_exposures,
            cached_answers=[
                UnitCachedAnswerOut(
                    prompt=entry.prompt,
                    version=entry.prompt_version,
                    config=entry.config,
                    config_version=entry.config_version,
                    text=entry.text,
                    created_at=entry.created_at,
                    expires_at=entry.expires_at,
                )
                for entry in cached
            ],
        )

    async def erase(self, unit: str, actor: Actor) -> UnitErasedOut:
        """Delete the unit's exposures, events and cached answers, take it out of every experiment's statistics,
        and audit.

        Idempotent: erasing a unit the service knows nothing of succeeds with zero counts.
        """
        await self.statistics.lock(wait=True)
        derived = len(await self.statistics.standings_of([unit])) + len(await self.statistics.metric_values_of([unit]))
        exposures, events = await self.repository.delete_facts(unit)
        await self.recomputer.recompute([unit])  # no facts left: its old contribution is subtracted
        await self.repository.delete_change_marker(unit)
        cached = await self.semantic_cache.delete_of_unit(unit_digest(unit))
        erased = UnitErasedOut(
            unit=unit, exposures=exposures, events=events, derived_rows=derived, cached_answers=cached
        )
        await self.audit.record(
            actor,
            "unit.erase",
            "unit",
            unit_digest(unit),
            after={"exposures": exposures, "events": events, "derived_rows": derived, "cached_answers": cached},
        )
        # Every replica drops the unit's buffered exposures, so none is written after the erasure.
        record_change(self.session, Change("experiment", unit, UNIT_ERASED))
        return erased
