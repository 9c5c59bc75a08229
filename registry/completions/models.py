from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Double, ForeignKey, Index, Integer, LargeBinary, String, Text, false
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from registry.db.base import Base, BigIntId, IdMixin, JSONValue, utcnow

# None is SQL NULL (not JSON null), so "completions with guard outcomes" is ``guard_outcomes IS NOT NULL``.
GUARD_OUTCOMES = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class CompletionRecord(IdMixin, Base):
    """One completion request and what it cost, written in batches after the fact.

    Names and numbers are copied rather than linked: usage stays readable after
    prompts or configs are renamed, and inserts need no lookups.
    """

    __tablename__ = "completions"
    __table_args__ = (
        Index("ix_completions_created_at", "created_at"),
        Index("ix_completions_prompt", "prompt", "prompt_version", "created_at"),
        Index("ix_completions_key", "api_key_id", "created_at"),
        Index("ix_completions_experiment", "experiment_key", "variant"),
        # The experiments' aggregator reads a unit's completions (registry.completions.observations).
        Index("ix_completions_unit", "unit", "created_at"),
    )

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    request_id: Mapped[str | None] = mapped_column(String(128))
    prompt: Mapped[str] = mapped_column(String(128))
    prompt_version: Mapped[int | None]
    config: Mapped[str | None] = mapped_column(String(128))
    config_version: Mapped[int | None]
    backend: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(256))
    experiment_key: Mapped[str | None] = mapped_column(String(128))
    experiment_phase: Mapped[int | None]
    variant: Mapped[str | None] = mapped_column(String(64))
    unit: Mapped[str | None] = mapped_column(String(256))
    api_key_id: Mapped[str | None] = mapped_column(String(16))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))  # ok, error, cancelled
    error_type: Mapped[str | None] = mapped_column(String(64))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    cost: Mapped[float] = mapped_column(Double, default=0.0)
    latency_ms: Mapped[float | None] = mapped_column(Double)
    ttft_ms: Mapped[float | None] = mapped_column(Double)
    fallback_used: Mapped[bool] = mapped_column(Boolean, default=False)
    # A request that failed over to its config's fallback after the first config's backend had spent tokens (an
    # answer broken off midway): that config, and what its backend spent, at its prices. ``input_tokens``,
    # ``output_tokens`` and ``cost`` are the whole request's (its key was charged both backends); usage by config
    # counts this part under the first config and the rest under ``config``. NULL and zeros otherwise.
    first_config: Mapped[str | None] = mapped_column(String(128))
    first_config_version: Mapped[int | None]
    first_input_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    first_output_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    first_cost: Mapped[float] = mapped_column(Double, default=0.0, server_default="0")
    # Every request that failed over (``fallback_used``), whether or not the first backend spent tokens: the backend
    # it tried first and the type of the failure that made it fail over (``circuit_open``: refused by that backend's
    # open breaker), which ``error_type`` (the last failure's) does not keep. NULL otherwise, and on records written
    # before migration 0021.
    first_backend: Mapped[str | None] = mapped_column(String(64))
    first_error_type: Mapped[str | None] = mapped_column(String(64))
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    # What the config's guards found (registry.guards): outcomes per guard, the guard that blocked, any flag.
    guard_outcomes: Mapped[list[dict[str, Any]] | None] = mapped_column(GUARD_OUTCOMES)
    guard_blocked: Mapped[str | None] = mapped_column(String(64))
    guard_flagged: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Made by a model guard's classifier checking another completion (registry.guards.classifier): it carries that
    # completion's unit, so it is the unit's data and counts in usage and spend, but it is no completion of the unit
    # in experiments' and rollouts' completion metrics (the guarded completion's latency already includes it).
    guard_check: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A semantic cache hit: how similar its request was to the one answered (registry.completions.semantic_cache).
    cache_similarity: Mapped[float | None] = mapped_column(Double)
    # Only for prompts with store_io, redacted, and cleared after the retention period.
    prompt_text: Mapped[str | None] = mapped_column(Text)
    completion_text: Mapped[str | None] = mapped_column(Text)


class DailyUsage(Base):
    """Completions summed per UTC day and (prompt, version, config, config version, key, experiment, variant).

    Written in the transaction that inserts the completions (``CompletionRepository.add_records``), so a
    usage report over whole days reads a row per day and group instead of every completion. A dimension
    that a completion has not (no config, no key, no experiment) is stored as ``''`` or ``0`` rather than
    NULL, so each group has one row to add to (NULLs never conflict in a unique key); readers turn
    them back into NULL. Means are kept as sums and counts.

    Holds no unit and no text, so nothing here is personal data: should completions ever be deleted
    (erasure of a unit's data, retention), these totals stay as they are, like any aggregate, and usage
    reports over whole days keep counting those requests. Today nothing deletes completions; the
    retention job only clears their stored texts.
    """

    __tablename__ = "usage_daily"

    day: Mapped[date] = mapped_column(primary_key=True)
    prompt: Mapped[str] = mapped_column(String(128), primary_key=True)
    prompt_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    config: Mapped[str] = mapped_column(String(128), primary_key=True)
    config_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    experiment_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    variant: Mapped[str] = mapped_column(String(64), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    cached: Mapped[int] = mapped_column(BigInteger, default=0)
    fallbacks: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[float] = mapped_column(Double, default=0.0)
    latency_ms_sum: Mapped[float] = mapped_column(Double, default=0.0)
    latency_count: Mapped[int] = mapped_column(BigInteger, default=0)
    ttft_ms_sum: Mapped[float] = mapped_column(Double, default=0.0)
    ttft_count: Mapped[int] = mapped_column(BigInteger, default=0)


class ApiKeyBudget(Base):
    """Monthly limits of one API key; no row (or a null limit) means unlimited."""

    __tablename__ = "api_key_budgets"

    api_key_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    monthly_tokens: Mapped[int | None]
    monthly_cost: Mapped[float | None] = mapped_column(Double)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class SemanticCacheSettings(Base):
    """A prompt's semantic cache: off unless a row says enabled (``PUT /v1/prompts/{name}/semantic-cache``)."""

    __tablename__ = "semantic_cache_settings"

    prompt_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("prompts.id", ondelete="CASCADE"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    threshold: Mapped[float] = mapped_column(Double)
    exact_variables: Mapped[list[str]] = mapped_column(JSONValue)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class SemanticCacheEntry(IdMixin, Base):
    """One answered request of a prompt version and config version, with its request's embedding.

    A lookup reads the newest entries of one ``scope`` (a hash of the prompt version, the config version,
    the embedding model, the values of the exact variables and every request field but the text), so the
    candidates are bounded however large the table grows; entries past ``expires_at`` are never served
    and are deleted by a periodic job.
    """

    __tablename__ = "semantic_cache_entries"
    __table_args__ = (
        Index("ix_semantic_cache_entries_scope", "scope", "created_at"),
        Index("ix_semantic_cache_entries_expires_at", "expires_at"),
        Index("ix_semantic_cache_entries_unit_digest", "unit_digest"),
        Index("ix_semantic_cache_entries_prompt", "prompt"),
    )

    scope: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(String(128))
    prompt_version: Mapped[int] = mapped_column(Integer)
    config: Mapped[str] = mapped_column(String(128))
    config_version: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, unit length
    text: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    # Whose request it answered (``unit_digest`` of the unit; None without one): erasing the unit deletes it.
    unit_digest: Mapped[str | None] = mapped_column(String(48))
