"""Alert rules over the registry's own signals, and the incidents they open and close.

A rule watches one signal (error rate, p95 latency, time to first token, cost per hour, refusals by an
open circuit breaker, a key's share of its monthly budget, rollouts rolled back) over a window, for one
scope (a prompt, a backend, a key, or all), optionally per group (one series per prompt, backend or key).
An incident is one series of one rule firing, from the evaluation that fired it to the one that resolved
it; at most one is firing per rule and series. The rule's lease lets one evaluator act on it at a time
across replicas, as rollouts and evaluation runs are taken.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import Double

from registry.db.base import Base, BigIntId, IdMixin, JSONValue, utcnow
from registry.rollouts.models import RolloutEvent

RULE_KINDS = (
    "error_rate",
    "latency_p95",
    "ttft_p95",
    "cost_per_hour",
    "breaker_open",
    "budget",
    "rollout_rolled_back",
)
GROUPINGS = ("prompt", "backend", "key")
INCIDENT_STATUSES = ("firing", "resolved")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class AlertRule(IdMixin, Base):
    __tablename__ = "alert_rules"
    __table_args__ = (
        CheckConstraint(_in("kind", RULE_KINDS), name="kind"),
        CheckConstraint(f"group_by IS NULL OR {_in('group_by', GROUPINGS)}", name="group_by"),
    )

    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[float] = mapped_column(Double)
    resolve_threshold: Mapped[float | None] = mapped_column(Double)  # hysteresis: resolves below this
    window_seconds: Mapped[int] = mapped_column(Integer)
    for_seconds: Mapped[int] = mapped_column(Integer, default=0)  # pending this long before firing
    min_count: Mapped[int] = mapped_column(Integer, default=1)  # completions a window needs to be judged
    prompt: Mapped[str | None] = mapped_column(String(128))
    backend: Mapped[str | None] = mapped_column(String(64))
    api_key: Mapped[str | None] = mapped_column(String(16))  # the key's public id
    group_by: Mapped[str | None] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    pending: Mapped[dict[str, Any]] = mapped_column(JSONValue, default=dict)  # series -> ISO time it became true
    last_evaluated_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class AlertIncident(IdMixin, Base):
    """The rule's name and kind are copied, so an incident stays readable after its rule is deleted."""

    __tablename__ = "alert_incidents"
    __table_args__ = (
        CheckConstraint(_in("status", INCIDENT_STATUSES), name="status"),
        # One firing incident per rule and series: a rule that stays true does not fire again.
        Index(
            "uq_alert_incidents_one_firing",
            "rule_id",
            "subject",
            unique=True,
            postgresql_where=text("status = 'firing'"),
            sqlite_where=text("status = 'firing'"),
        ),
    )

    rule_id: Mapped[int | None] = mapped_column(BigIntId, ForeignKey("alert_rules.id", ondelete="SET NULL"), index=True)
    rule_name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(256))  # the series: '' for the whole scope, else the group's value
    status: Mapped[str] = mapped_column(String(16), default="firing")
    value: Mapped[float] = mapped_column(Double)  # the value that fired
    peak_value: Mapped[float] = mapped_column(Double)
    last_value: Mapped[float | None] = mapped_column(Double)  # at the last evaluation (None: no data)
    threshold: Mapped[float] = mapped_column(Double)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]
    resolution: Mapped[str | None] = mapped_column(String(64))  # cleared, rule_disabled, rule_deleted, rule_changed


# Rollbacks in a window are read by time; ``rollout_events`` had an index on its rollout only.
ROLLOUT_EVENTS_AT = Index("ix_rollout_events_at", RolloutEvent.at)
