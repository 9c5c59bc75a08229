"""A unit's data: everything held on it (access requests) and its erasure everywhere.

Besides the experiments' facts, that includes the unit's completion records (and the texts those of prompts with
``store_io`` keep), the semantic cache entries that answered the unit's requests and the exact cache entries its
requests stored (both carry the unit's digest, never the unit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.completions.cache import ResponseCache
from registry.completions.repository import CompletionRepository
from registry.completions.semantic_repository import SemanticCacheRepository
from registry.completions.usage import UsageRecorder
from registry.db.base import utcnow
from registry.experiments.aggregator import UnitRecomputer
from registry.experiments.errors import UnitNotFoundError
from registry.experiments.exposures import ExposureBuffer
from registry.experiments.privacy_digest import unit_digest as unit_digest
from registry.experiments.repository import ERASURE_ACTION, StatisticsRepository, UnitDataRepository
from registry.experiments.router import UNIT_ERASED
from registry.experiments.schemas import (
    UnitCachedAnswerOut,
    UnitCachedCompletionOut,
    UnitCompletionsOut,
    UnitDataOut,
    UnitErasedOut,
    UnitEventOut,
    UnitExposureOut,
    UnitForcedOut,
    UnitMetricOut,
    UnitStandingOut,
    UnitStoredTextOut,
)
from registry.experiments.sources import ObservationSource
from registry.lib.changes import Change, record_change


class UnitDataService:
    def __init__(
        self,
        session: AsyncSession,
        sources: Mapping[str, ObservationSource],
        *,
        grace: timedelta,
        cache: ResponseCache | None = None,
        usage: UsageRecorder | None = None,
        exposures: ExposureBuffer | None = None,
    ) -> None:
        self.session = session
        self.repository = UnitDataRepository(session)
        self.statistics = StatisticsRepository(session)
        self.recomputer = UnitRecomputer(session, sources, grace=grace)
        self.audit = AuditLog(session)
        self.semantic_cache = SemanticCacheRepository(session)
        self.completions = CompletionRepository(session)
        self.cache = cache  # the exact completion cache
        self.usage = usage  # this process's buffer of completion records not yet written
        self.exposures = exposures  # this process's buffer of first exposures not yet written

    async def describe(self, unit: str, *, pending_exposures: int) -> UnitDataOut:
        """What is held on the unit, its completion records still buffered in this process included: they are
        written first (before the session holds a connection: the flush takes one of its own), as ``GET
        /v1/usage`` does, so a request just made is shown, and counted as its erasure counts it."""
        if self.usage is not None:
            await self.usage.flush()
        exposures = await self.repository.exposures(unit)
        events = await self.repository.events(unit)
        standings = await self.repository.standings(unit)
        cached = await self.semantic_cache.entries_of_unit(unit_digest(unit))
        completions = await self.completions.of_unit(unit)
        forced = await self.repository.forced_in(unit)
        exact = [] if self.cache is None else await self.cache.entries_of_unit(unit)
        now = utcnow()
        if not (exposures or events or standings or pending_exposures or cached or completions or forced or exact):
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
            cached_completions=[
                UnitCachedCompletionOut(
                    text=entry.text, finish_reason=entry.finish_reason, expires_at=now + timedelta(seconds=left)
                )
                for entry, left in exact
            ],
            completions=UnitCompletionsOut(
                count=len(completions),
                stored_texts=[
                    UnitStoredTextOut(
                        prompt=prompt,
                        version=version,
                        config=config,
                        config_version=config_version,
                        created_at=created_at,
                        prompt_text=prompt_text,
                        completion_text=completion_text,
                    )
                    for prompt, version, config, config_version, created_at, prompt_text, completion_text in completions
                    if prompt_text is not None or completion_text is not None
                ],
            ),
            forced_variants=[UnitForcedOut(experiment=e.key, variant=variant) for e, variant in forced],
        )

    async def erase(self, unit: str, actor: Actor) -> UnitErasedOut:
        """Delete the unit's exposures, events and cached answers, cut its completions loose from it, take it out
        of every experiment's statistics and forced variants, and audit; all in the request's transaction.

        Completion records are anonymised rather than deleted, column by column:

        - ``unit`` is cleared: it is the identity itself. The completions observation source reads completions by
          unit, so the unit's completions leave the experiments' results in the same recomputation that takes its
          exposures and events out (as for those, its share of every sum is subtracted);
        - ``prompt_text`` and ``completion_text`` are cleared: what the unit wrote and was answered;
        - ``request_id`` is cleared: it links the record to request logs and traces that name the unit;
        - everything counted is kept: time, prompt and config versions, backend, model, key, experiment and
          variant, status, tokens, cost, latencies, cache and fallback flags, guard outcomes (kinds of findings,
          never the text). Usage reports, key budgets (``month_usage`` sums completions), the daily rollup, alerts
          and guard reports already counted these requests, and deleting the rows would change what they report
          for the past and hand a key its spent budget back; without the unit and the texts, nothing left points
          to the person.

        The counts include the unit's completions this process had buffered and not yet written (anonymised in
        the buffer). First, before the session holds a connection, the usage buffer anonymises them and waits for
        any batch being written, so that a batch taken before the erasure commits before the update here, and the
        exposure buffer waits for a batch being written likewise. Should the erasure then fail and roll back, what
        the usage buffer anonymised stays so (the erasure was asked for), but nothing else: the erasure is
        remembered (the unit's exposures, events and completions recorded after it dropped or anonymised for
        ``ERASURE_IN_FLIGHT_SECONDS``) only once it committed, when its change reaches every replica's handlers,
        this one's included (before the erasure is answered). A completion in flight meanwhile is buffered without
        the unit, its request id and texts (and not counted). Other replicas anonymise their buffered completions
        when the change reaches them (not counted here).

        The change may reach another replica after that replica wrote a batch of the unit's facts or completions.
        So the erasure first takes ``ERASURE_LOCK`` alone, until it ends, and every write checks, once committed
        and under that lock shared, the units it wrote against the erasures' audit entries (the durable record,
        by digest), erasing again what an erasure missed (``registry.experiments.exposures``,
        ``registry.completions.usage``).

        A completion of the unit in flight meanwhile keeps its answer in neither cache: the semantic cache's store
        takes the unit's lock taken here and looks for this erasure's audit entry; the exact cache refuses the
        unit's writes after its deletion (``registry.completions.cache``).

        Raises ``CacheUnavailableError`` (503) when the exact cache's Redis is unreachable: the transaction then
        rolls back and nothing is erased. Idempotent: erasing a unit the service knows nothing of succeeds with
        zero counts.
        """
        buffered, buffered_texts = (0, 0) if self.usage is None else await self.usage.erase_unit(unit)
        if self.exposures is not None:
            await self.exposures.erase_unit(unit)
        await self.repository.lock_erasures(erasing=True)  # before the deletes: see the docstring
        forced = await self._unpin(unit, actor)  # the experiments' rows before the statistics, as their updates do
        await self.statistics.lock(wait=True)
        derived = len(await self.statistics.standings_of([unit])) + len(await self.statistics.metric_values_of([unit]))
        exposures, events = await self.repository.delete_facts(unit)
        written, written_texts = await self.completions.anonymise_unit(unit)
        completions, texts = written + buffered, written_texts + buffered_texts
        await self.recomputer.recompute([unit])  # no facts left: its old contribution is subtracted
        await self.repository.delete_change_marker(unit)
        # Alone on the unit's lock: an answer stored meanwhile is deleted here, one stored after sees the erasure.
        await self.semantic_cache.lock_unit(unit_digest(unit), erasing=True)
        cached = await self.semantic_cache.delete_of_unit(unit_digest(unit))
        cached_completions = 0 if self.cache is None else await self.cache.erase_unit(unit)
        erased = UnitErasedOut(
            unit=unit,
            exposures=exposures,
            events=events,
            derived_rows=derived,
            cached_answers=cached,
            completions=completions,
            completion_texts=texts,
            cached_completions=cached_completions,
            forced_variants=forced,
        )
        await self.audit.record(
            actor,
            ERASURE_ACTION,  # the durable record of the erasure, which writes committed after it are checked against
            "unit",
            unit_digest(unit),
            after={
                "exposures": exposures,
                "events": events,
                "derived_rows": derived,
                "cached_answers": cached,
                "completions": completions,
                "completion_texts": texts,
                "cached_completions": cached_completions,
                "forced_variants": forced,
            },
        )
        # Once committed, every replica drops the unit's buffered exposures, and the exposures and events its
        # requests in flight record after (registry.experiments.exposures, .ingest), so none is written after the
        # erasure, and anonymises its buffered completions and drops its in-process cache entries
        # (registry.completions). The change names the unit's digest: without Redis it is kept in the change log
        # for a while.
        record_change(self.session, Change("experiment", unit_digest(unit), UNIT_ERASED))
        return erased

    async def _unpin(self, unit: str, actor: Actor) -> int:
        """Take the unit out of every experiment's forced variants, which name it: each experiment's change is
        audited (forced units counted per variant, as its updates are) and reaches the routers, which then hash the
        unit like any other."""
        pins = await self.repository.forced_in(unit, for_update=True)
        for experiment, _ in pins:
            before = _forced_counts(experiment.forced_variants)
            experiment.forced_variants = {u: v for u, v in experiment.forced_variants.items() if u != unit}
            experiment.updated_at = utcnow()
            experiment.updated_by = actor.name
            await self.session.flush()
            await self.audit.record(
                actor,
                "experiment.update",
                "experiment",
                experiment.key,
                before={"forced_variants": before},
                after={"forced_variants": _forced_counts(experiment.forced_variants), "reason": "a unit was erased"},
            )
            record_change(self.session, Change("experiment", experiment.key, "updated"))
        return len(pins)


def _forced_counts(forced: Mapping[str, object]) -> dict[str, int]:
    return dict(sorted(Counter(str(variant) for variant in forced.values()).items()))
