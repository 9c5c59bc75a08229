"""Evaluation datasets (immutable numbered versions of items), runs, their scored items, and promotion gates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from registry.db.base import Base, BigIntId, IdMixin, JSONValue, utcnow

RUN_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
# scorer_error: a scorer (a judge) failed for its own reasons, which says nothing of the output: neither pass nor fail.
ITEM_STATUSES = ("scored", "invalid", "error", "scorer_error")


class EvalDataset(IdMixin, Base):
    """A named set of evaluation cases; its items live in immutable numbered versions."""

    __tablename__ = "eval_datasets"

    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    latest_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class EvalDatasetVersion(IdMixin, Base):
    """A frozen list of items; ``content_sha256`` is the digest of the items in order."""

    __tablename__ = "eval_dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "number"),
        CheckConstraint("number >= 1", name="number_positive"),
    )

    dataset_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("eval_datasets.id", ondelete="CASCADE"))
    number: Mapped[int]
    item_count: Mapped[int]
    content_sha256: Mapped[str] = mapped_column(String(64))
    commit_message: Mapped[str] = mapped_column(String(1000), default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalDatasetItem(Base):
    """One case: the prompt's variables, what it should answer (optional), tags and free metadata."""

    __tablename__ = "eval_dataset_items"

    version_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("eval_dataset_versions.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    variables: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    expected: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSONValue)
    item_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONValue)


class EvalRun(IdMixin, Base):
    """One prompt version with one config version on one dataset version, and its progress.

    ``lease_owner`` and ``lease_expires_at`` make one worker the owner at a time;
    a lease that is not renewed expires and another worker takes the run over.
    """

    __tablename__ = "eval_runs"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in RUN_STATUSES)})", name="status"),
        Index("ix_eval_runs_pending", "status", "lease_expires_at"),
        Index("ix_eval_runs_evidence", "prompt", "prompt_version", "dataset_version_id"),
    )

    prompt: Mapped[str] = mapped_column(String(128))
    prompt_version: Mapped[int]
    config: Mapped[str] = mapped_column(String(128))
    config_version: Mapped[int]
    dataset_version_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("eval_dataset_versions.id", ondelete="RESTRICT"), index=True
    )
    dataset: Mapped[str] = mapped_column(String(128))
    dataset_version: Mapped[int]
    scorers: Mapped[list[dict[str, Any]]] = mapped_column(JSONValue)
    pass_rule: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    concurrency: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="queued")
    total_items: Mapped[int]
    items_done: Mapped[int] = mapped_column(default=0)
    items_passed: Mapped[int] = mapped_column(default=0)
    items_invalid: Mapped[int] = mapped_column(default=0)
    items_errored: Mapped[int] = mapped_column(default=0)
    # Items whose scorer failed (status ``scorer_error``): out of the pass rate, and a gate's evidence names them.
    items_scorer_errors: Mapped[int] = mapped_column(default=0, server_default="0")
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    # Of ``cost`` and the tokens: what the attempts of the lease's owner still under way have spent (their items
    # neither stored nor given up yet); 0 while nobody holds the lease. A run's discarded spend is the rest of what
    # its stored outcomes do not account for (``EvalRepository.spend``).
    pending_cost: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    pending_input_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    pending_output_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    api_key_id: Mapped[str | None] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]


class EvalRunItem(Base):
    """One item's outcome in a run; the primary key makes each item scored exactly once per run."""

    __tablename__ = "eval_run_items"
    __table_args__ = (CheckConstraint(f"status IN ({', '.join(repr(s) for s in ITEM_STATUSES)})", name="status"),)

    run_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("eval_runs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[str | None] = mapped_column(Text)
    scores: Mapped[list[dict[str, Any]]] = mapped_column(JSONValue)
    score: Mapped[float | None] = mapped_column(Float)
    passed: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    fallback_used: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalGate(IdMixin, Base):
    """What a prompt version must show on a dataset before it may enter ``state``."""

    __tablename__ = "eval_gates"
    __table_args__ = (UniqueConstraint("prompt_id", "state"),)

    prompt_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("prompts.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(128))
    dataset_version: Mapped[int | None]  # None: the dataset's latest version when the promotion is checked
    min_pass_rate: Mapped[float | None] = mapped_column(Float)
    no_regression: Mapped[bool] = mapped_column(Boolean, default=False)
    alpha: Mapped[float] = mapped_column(Float, default=0.05)
    # The scoring a run must have used to count (normalised scorer specs and pass rule); None: any scoring,
    # the meaning of every gate set before gates named their scoring.
    scorers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONValue)
    pass_rule: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
