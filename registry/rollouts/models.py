"""Rollouts: a candidate version taking a growing share of a prompt's production traffic.

Each rollout is backed by an experiment of kind ``rollout`` (variants ``production`` and
``candidate``, the candidate's weight being the current step's share), so the router, exposures,
observation sources (completions) and statistics of experiments serve it unchanged; every step is a
phase of that experiment, so each step's comparison is between units split at that step's share.
``rollout_events`` is the rollout's own history: creation, every step, pause, resume, abort,
advance, rollback and promotion, with the evidence of the check that caused it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import Double

from registry.db.base import Base, BigIntId, IdMixin, JSONValue, utcnow
from registry.experiments.models import Experiment
from registry.prompts.models import Prompt

ACTIVE_STATUSES = ("running", "paused")
ROLLOUT_STATUSES = (*ACTIVE_STATUSES, "rolled_back", "aborted", "completed")


class Rollout(IdMixin, Base):
    __tablename__ = "rollouts"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in ROLLOUT_STATUSES)})", name="status"),
        # One rollout per prompt at a time.
        Index(
            "uq_rollouts_one_active",
            "prompt_id",
            unique=True,
            postgresql_where=text("status IN ('running', 'paused')"),
            sqlite_where=text("status IN ('running', 'paused')"),
        ),
    )

    prompt_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("prompts.id", ondelete="RESTRICT"), index=True)
    experiment_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("experiments.id", ondelete="RESTRICT"), unique=True)
    candidate_version: Mapped[int] = mapped_column(Integer)
    production_version: Mapped[int | None] = mapped_column(Integer)
    config: Mapped[str | None] = mapped_column(String(128))
    config_version: Mapped[int | None] = mapped_column(Integer)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONValue)
    guardrails: Mapped[list[dict[str, Any]]] = mapped_column(JSONValue)
    alpha: Mapped[float] = mapped_column(Double)
    status: Mapped[str] = mapped_column(String(16), default="running")
    step: Mapped[int] = mapped_column(Integer, default=0)
    step_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))
    ended_at: Mapped[datetime | None]

    prompt: Mapped[Prompt] = relationship(lazy="raise")
    experiment: Mapped[Experiment] = relationship(lazy="raise")

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


class RolloutEvent(IdMixin, Base):
    __tablename__ = "rollout_events"

    rollout_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    action: Mapped[str] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONValue)
