from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Double, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from registry.db.base import Base, BigIntId, IdMixin, utcnow


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
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    # Only for prompts with store_io, redacted, and cleared after the retention period.
    prompt_text: Mapped[str | None] = mapped_column(Text)
    completion_text: Mapped[str | None] = mapped_column(Text)


class ApiKeyBudget(Base):
    """Monthly limits of one API key; no row (or a null limit) means unlimited."""

    __tablename__ = "api_key_budgets"

    api_key_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    monthly_tokens: Mapped[int | None]
    monthly_cost: Mapped[float | None] = mapped_column(Double)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))
