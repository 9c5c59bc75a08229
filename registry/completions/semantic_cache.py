"""Semantic cache: a deterministic completion whose request is close enough to one already answered, for the
same prompt version and config version, is served that answer.

Opt-in per prompt (``PUT /v1/prompts/{name}/semantic-cache``: enabled, threshold, exact variables). A request
is embedded by the configured embedding backend; the candidates are the newest
``REGISTRY_SEMANTIC_CACHE_MAX_CANDIDATES`` unexpired entries of its scope (``similarity.scope_key``: the prompt
version, config version, embedding model, exact variables' values and request parameters), and the most
similar one at or above the prompt's threshold answers. Entries live ``REGISTRY_SEMANTIC_CACHE_TTL_SECONDS``.

Privacy: entries hold a prompt's answers and its requests' embeddings, so a prompt whose storage policy keeps
no inputs and outputs (``store_io`` false) never looks up nor stores here (and cannot enable the cache,
``semantic_settings``; a store reads the settings again in its transaction, under a shared lock on PostgreSQL,
so an answer in flight when ``store_io`` goes off is not kept either). Each entry carries the ``unit_digest``
of the unit whose request it answered, so erasing that unit (``registry.experiments.privacy``) deletes it, and
an answer to a request looked up before the erasure is not stored after it (``store`` looks, in its
transaction, for an erasure of the unit since the lookup, ``ERASURE_CLOCK_SKEW`` early; an erasure and a store
of one unit take one lock on PostgreSQL, and SQLite runs one writing transaction at a time, so either the
erasure deletes the entry or the store sees the erasure). An answer may serve other units, so one whose
request (variables or text) or text holds personal data is never stored (``semantic_privacy.holds_personal_data``;
counted in ``registry_semantic_cache_store_skips_total{reason="personal_data"}``). Nor is one holding a NUL
(U+0000), which PostgreSQL cannot store: replayed with U+FFFD in its place, a hit would not be the model's answer
(``reason="nul"``); nor one whose finish reason is longer than its column, cut to fit it would not be the backend's
(``reason="long_finish_reason"``).

A cache failure is never a request failure: an embedding backend that is down, or a database that cannot be
read or written, leaves the completion to the model as usual, counted in
``registry_semantic_cache_lookups_total{outcome="unavailable"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.cache import CachedCompletion
from registry.completions.embeddings import EmbeddingClient, EmbeddingUnavailableError
from registry.completions.metrics import CompletionMetrics
from registry.completions.models import SemanticCacheEntry
from registry.completions.payload import is_deterministic
from registry.completions.semantic_privacy import holds_personal_data
from registry.completions.semantic_repository import SemanticCacheRepository
from registry.completions.similarity import best_match, exact_values, pack, request_text, scope_key
from registry.db.base import utcnow
from registry.db.text import NUL, column_lengths
from registry.experiments.privacy_digest import unit_digest
from registry.lib.cache import TTLCache
from registry.lib.changes import Change, ChangeBus
from registry.lib.logging import error_text
from registry.prompts.catalog import Rendering
from registry.prompts.schemas import LinkedConfig

logger = structlog.get_logger("registry.completions.semantic_cache")

_DATABASE_ERRORS = (SQLAlchemyError, OSError, TimeoutError)
_FINISH_REASON_LENGTH = column_lengths(SemanticCacheEntry)["finish_reason"]

# How far apart two replicas' clocks may be: an erasure recorded up to this long before a lookup (by the erasing
# replica's clock) still keeps that lookup's answer out; at worst an erased unit's next answers are not kept.
ERASURE_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class PromptCacheSettings:
    prompt_id: int
    enabled: bool
    threshold: float
    exact_variables: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SemanticHit:
    entry_id: int
    similarity: float
    completion: CachedCompletion


@dataclass(frozen=True, slots=True)
class SemanticProbe:
    """A looked-up request: where its answer is stored on a miss, and the hit if there was one."""

    scope: str
    embedding: bytes
    prompt: str
    version: int
    config: LinkedConfig
    hit: SemanticHit | None
    unit: str | None = None  # the request's unit, whose digest the stored answer carries
    personal: bool = False  # the request holds personal data: its answer is not stored
    looked_up_at: datetime = field(default_factory=utcnow)  # an erasure of the unit since then: not stored


class SemanticCache:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        embeddings: EmbeddingClient | None,
        metrics: CompletionMetrics,
        bus: ChangeBus,
        *,
        ttl: float,
        max_candidates: int,
        settings_ttl: float,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.embeddings = embeddings
        self._metrics = metrics
        self.ttl = ttl
        self.max_candidates = max_candidates
        self._settings_ttl = settings_ttl
        # By prompt name: its settings (None: off), read once per lifetime and dropped when the prompt changes.
        self._settings: TTLCache[str, tuple[PromptCacheSettings | None]] = TTLCache(10_000)
        bus.subscribe(self._on_change)

    @property
    def enabled(self) -> bool:
        return self.embeddings is not None

    def _on_change(self, change: Change) -> None:
        if change.kind == "prompt":
            self._settings.pop(change.name)
        elif change.kind == "reset":
            self._settings.clear()

    async def _prompt_settings(self, name: str) -> PromptCacheSettings | None:
        kept = self._settings.peek(name)
        if kept is not None and kept[1]:
            return kept[0][0]
        try:
            async with self._sessionmaker() as session:
                found = await SemanticCacheRepository(session).settings_of_prompt(name)
        except _DATABASE_ERRORS as exc:
            logger.warning("semantic cache settings unreadable; the cache is skipped", error=error_text(exc))
            return kept[0][0] if kept is not None else None  # an older copy beats none while the database is away
        settings = None
        if found is not None and found[1] is not None:
            row = found[1]
            settings = PromptCacheSettings(found[0], row.enabled, row.threshold, tuple(row.exact_variables))
        self._settings.set(name, (settings,), self._settings_ttl)
        return settings

    async def probe(
        self,
        rendering: Rendering,
        config: LinkedConfig,
        payload: Mapping[str, Any],
        variables: Mapping[str, Any],
        *,
        unit: str | None = None,
    ) -> SemanticProbe | None:
        """Look the request up; None when the cache does not apply to it (off, not deterministic, unavailable,
        or a prompt that stores no inputs and outputs: its settings may still read as on for a moment)."""
        out = rendering.out
        if self.embeddings is None or not out.version or not is_deterministic(payload):
            return None
        if not rendering.resolution.entry.store_io:
            return None
        settings = await self._prompt_settings(out.prompt)
        if settings is None or not settings.enabled:
            return None
        scope = scope_key(
            prompt=out.prompt,
            version=out.version,
            config=config.name,
            config_version=config.version,
            model=self.embeddings.model,
            exact=exact_values(variables, settings.exact_variables),
            payload=payload,
        )
        try:
            embedding = pack(await self.embeddings.embed(request_text(payload)))
        except (EmbeddingUnavailableError, ValueError) as exc:
            self._unavailable("embedding backend failed; the model answers", exc)
            return None
        try:
            hit = await self._lookup(scope, embedding, settings.threshold)
        except _DATABASE_ERRORS as exc:
            self._unavailable("semantic cache unreadable; the model answers", exc)
            return None
        self._metrics.semantic_cache.labels("hit" if hit else "miss").inc()
        personal = hit is None and holds_personal_data(variables, request_text(payload))
        return SemanticProbe(scope, embedding, out.prompt, out.version, config, hit, unit, personal)

    def _unavailable(self, message: str, exc: Exception) -> None:
        logger.warning(message, error=error_text(exc))
        self._metrics.semantic_cache.labels("unavailable").inc()

    async def _lookup(self, scope: str, embedding: bytes, threshold: float) -> SemanticHit | None:
        async with self._sessionmaker() as session:
            repository = SemanticCacheRepository(session)
            rows = await repository.candidates(scope, now=utcnow(), limit=self.max_candidates)
            scored = best_match(embedding, rows, 0.0)
            if scored is not None:
                self._metrics.semantic_similarity.observe(scored[1])
            if scored is None:
                return None
            # Compared as reported: float32 unit vectors are not exactly of length 1, so a request's similarity with
            # itself may come out at 0.99999996, which must not miss a threshold of 1.
            similarity = min(1.0, round(scored[1], 6))
            if similarity < threshold:
                return None
            entry = await repository.get_entry(scored[0])
            if entry is None:  # purged in between
                return None
            completion = CachedCompletion(entry.text, entry.finish_reason, entry.input_tokens, entry.output_tokens)
            return SemanticHit(entry.id, similarity, completion)

    async def store(self, probe: SemanticProbe | None, completion: CachedCompletion) -> None:
        """Keep a miss's answer for the requests like it that follow."""
        if probe is None or probe.hit is not None:
            return
        if probe.personal or holds_personal_data({}, completion.text):  # it could reach another unit
            self._metrics.semantic_cache_skips.labels("personal_data").inc()
            return
        if NUL in completion.text or NUL in (completion.finish_reason or ""):
            # PostgreSQL cannot store a NUL, and a hit must replay the model's answer as it was, not as U+FFFD.
            self._metrics.semantic_cache_skips.labels("nul").inc()
            return
        if len(completion.finish_reason or "") > _FINISH_REASON_LENGTH:  # a backend's odd one, refused by PostgreSQL
            self._metrics.semantic_cache_skips.labels("long_finish_reason").inc()
            return
        settings = await self._prompt_settings(probe.prompt)
        if settings is None or not settings.enabled:  # turned off (or store_io turned off) while the model answered
            return
        now = utcnow()
        entry = SemanticCacheEntry(
            scope=probe.scope,
            prompt=probe.prompt,
            prompt_version=probe.version,
            config=probe.config.name,
            config_version=probe.config.version,
            embedding=probe.embedding,
            text=completion.text,
            finish_reason=completion.finish_reason,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            created_at=now,
            expires_at=now + timedelta(seconds=self.ttl),
            unit_digest=None if probe.unit is None else unit_digest(probe.unit),
        )
        try:
            async with self._sessionmaker() as session, session.begin():
                repository = SemanticCacheRepository(session)
                if entry.unit_digest is not None:
                    await repository.lock_unit(entry.unit_digest, erasing=False)
                    since = probe.looked_up_at - ERASURE_CLOCK_SKEW
                    if await repository.unit_erased_since(entry.unit_digest, since):
                        logger.info("the unit was erased while the model answered; the answer is not kept")
                        return
                if not await repository.keeps_answers(settings.prompt_id):  # turned off in the meantime
                    return
                await repository.add_entry(entry)
        except _DATABASE_ERRORS as exc:
            logger.warning("could not keep the answer in the semantic cache", error=error_text(exc))
            self._metrics.semantic_cache_store_errors.inc()

    async def purge_expired(self) -> None:
        async with self._sessionmaker() as session, session.begin():
            purged = await SemanticCacheRepository(session).purge_expired(utcnow())
        if purged:
            logger.info("purged expired semantic cache entries", rows=purged)
