"""Request and response bodies of the evaluations API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from registry.configs.schemas import ConfigRef
from registry.db.text import nul_location
from registry.evals.models import EvalDataset, EvalDatasetItem, EvalDatasetVersion, EvalGate, EvalRun, EvalRunItem
from registry.evals.scorers import MAX_SCORERS
from registry.evals.scoring import Scoring, describe
from registry.lib.schema import TEXT_PATTERN, Description, Input, Output, Reason, ResourceName, Tags

MAX_ITEMS = 100_000
VersionNumber = Annotated[int, msgspec.Meta(ge=1, le=2_147_483_647)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


# --------------------------------------------------------------------------- datasets


class CreateDataset(Input):
    name: ResourceName
    description: Description = ""


class DatasetItemIn(Input):
    """One case: the variables the prompt is rendered with, and optionally what it should answer."""

    variables: dict[str, Any] = msgspec.field(default_factory=dict)
    expected: Annotated[str, msgspec.Meta(max_length=1_000_000)] | None = None
    tags: Tags = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a NUL (U+0000), naming where: PostgreSQL cannot store one, and a dataset is the caller's own
        cases, which a run must render as given (stored as U+FFFD, they would not be the cases uploaded)."""
        for name in ("variables", "expected", "metadata"):
            where = nul_location(getattr(self, name), name)
            if where is not None:
                raise ValueError(f"{where} holds a NUL (U+0000), which cannot be stored")


class CreateDatasetVersion(Input):
    items: Annotated[list[DatasetItemIn], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]
    commit_message: Annotated[str, msgspec.Meta(max_length=1000, pattern=TEXT_PATTERN)] = ""


class DatasetOut(Output):
    name: str
    description: str
    latest_version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str

    @classmethod
    def of(cls, dataset: EvalDataset) -> DatasetOut:
        return cls(
            name=dataset.name,
            description=dataset.description,
            latest_version=dataset.latest_version,
            created_at=dataset.created_at,
            created_by=dataset.created_by,
            updated_at=dataset.updated_at,
            updated_by=dataset.updated_by,
        )


class DatasetPage(Output):
    items: list[DatasetOut]
    next_cursor: str | None


class DatasetVersionOut(Output):
    dataset: str
    version: int
    item_count: int
    sha256: str
    commit_message: str
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, name: str, version: EvalDatasetVersion) -> DatasetVersionOut:
        return cls(
            dataset=name,
            version=version.number,
            item_count=version.item_count,
            sha256=version.content_sha256,
            commit_message=version.commit_message,
            created_by=version.created_by,
            created_at=version.created_at,
        )


class DatasetVersionPage(Output):
    items: list[DatasetVersionOut]
    next_cursor: str | None


class DatasetItemOut(Output):
    position: int
    variables: dict[str, Any]
    expected: str | None
    tags: list[str]
    metadata: dict[str, Any]

    @classmethod
    def of(cls, item: EvalDatasetItem) -> DatasetItemOut:
        return cls(
            position=item.position,
            variables=item.variables,
            expected=item.expected,
            tags=list(item.tags),
            metadata=item.item_metadata,
        )


class DatasetItemPage(Output):
    items: list[DatasetItemOut]
    next_cursor: str | None


# --------------------------------------------------------------------------- runs


class DatasetRef(Input):
    name: ResourceName
    version: VersionNumber | None = None  # None: the latest version


class CreateRun(Input):
    """Evaluate one prompt version with one config version: ``config`` (any config, by version or label, for a
    version with or without a config of its own), else ``config_version`` of the version's own config, else the
    version's own config version."""

    prompt: ResourceName
    version: VersionNumber
    dataset: DatasetRef
    scorers: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1, max_length=MAX_SCORERS)]
    config: ConfigRef | None = None
    config_version: VersionNumber | None = None
    pass_rule: dict[str, Any] | None = None
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4


class Interval(Output):
    estimate: float | None
    low: float | None
    high: float | None


class DiscardedSpend(Output):
    """Completions made for items whose outcome was then not stored, already counted in the run's cost and tokens.

    Their worker was taken over while it stalled (the new owner asked again), the run was cancelled
    while they ran, or the backend failed before the item was scored (the item is asked again when the
    run resumes). Both attempts were charged to the key, so the run's cost counts both.
    """

    cost: float
    input_tokens: int
    output_tokens: int


class RunOut(Output):
    id: int
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    prompt: str
    version: int
    config: str
    config_version: int
    dataset: str
    dataset_version: int
    scorers: list[dict[str, Any]]
    pass_rule: dict[str, Any] | None
    concurrency: int
    total_items: int
    items_done: int
    items_passed: int
    items_invalid: int
    items_errored: int
    pass_rate: float | None  # of the items done so far whose scorers all answered
    cost: float
    input_tokens: int
    output_tokens: int
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    pass_rate_interval: Interval | None = None
    mean_score_interval: Interval | None = None
    discarded: DiscardedSpend | None = None  # on a single run's read
    # Items a scorer (a judge) failed on: neither passed nor failed, left out of ``pass_rate``.
    items_scorer_errors: int = 0

    @classmethod
    def of(cls, run: EvalRun, *, pass_rate: Interval | None = None, mean_score: Interval | None = None) -> RunOut:
        return cls(
            id=run.id,
            status=run.status,  # type: ignore[arg-type]
            prompt=run.prompt,
            version=run.prompt_version,
            config=run.config,
            config_version=run.config_version,
            dataset=run.dataset,
            dataset_version=run.dataset_version,
            scorers=run.scorers,
            pass_rule=run.pass_rule,
            concurrency=run.concurrency,
            total_items=run.total_items,
            items_done=run.items_done,
            items_passed=run.items_passed,
            items_invalid=run.items_invalid,
            items_errored=run.items_errored,
            pass_rate=pass_rate_of(run),
            cost=round(run.cost, 9),
            input_tokens=run.input_tokens,
            output_tokens=run.output_tokens,
            created_by=run.created_by,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            error=run.error,
            pass_rate_interval=pass_rate,
            mean_score_interval=mean_score,
            items_scorer_errors=run.items_scorer_errors,
        )


def pass_rate_of(run: EvalRun) -> float | None:
    """The share of the items done that passed, of those whose scorers all answered (a scorer's own failure
    says nothing of the output); None before any such item."""
    judged = run.items_done - run.items_scorer_errors
    return round(run.items_passed / judged, 6) if judged > 0 else None


class RunPage(Output):
    items: list[RunOut]
    next_cursor: str | None


class RunItemOut(Output):
    position: int
    status: str
    output: str | None
    scores: list[dict[str, Any]]
    score: float | None
    passed: bool
    error: str | None
    latency_ms: float | None
    input_tokens: int
    output_tokens: int
    cost: float
    cached: bool
    fallback_used: bool

    @classmethod
    def of(cls, item: EvalRunItem) -> RunItemOut:
        return cls(
            position=item.position,
            status=item.status,
            output=item.output,
            scores=item.scores,
            score=item.score,
            passed=item.passed,
            error=item.error,
            latency_ms=item.latency_ms,
            input_tokens=item.input_tokens,
            output_tokens=item.output_tokens,
            cost=item.cost,
            cached=item.cached,
            fallback_used=item.fallback_used,
        )


class RunItemPage(Output):
    items: list[RunItemOut]
    next_cursor: str | None


class ProgressEvent(Output):
    """One ``progress`` event of a run's stream."""

    id: int
    status: str
    total_items: int
    items_done: int
    items_passed: int
    pass_rate: float | None
    cost: float
    items_scorer_errors: int = 0

    @classmethod
    def of(cls, run: RunOut) -> ProgressEvent:
        return cls(
            id=run.id,
            status=run.status,
            total_items=run.total_items,
            items_done=run.items_done,
            items_passed=run.items_passed,
            pass_rate=run.pass_rate,
            cost=run.cost,
            items_scorer_errors=run.items_scorer_errors,
        )


class ComparisonOut(Output):
    base: int
    candidate: int
    paired_items: int
    comparison: dict[str, Any]


# --------------------------------------------------------------------------- gates


class SetGate(Input):
    """``scorers`` (and ``pass_rule``, every scorer passing by default) name the scoring a run must have used to
    count as evidence; without them a run scored any way counts."""

    dataset: DatasetRef
    min_pass_rate: Probability | None = None
    no_regression: bool = False
    alpha: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.05
    scorers: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1, max_length=MAX_SCORERS)] | None = None
    pass_rule: dict[str, Any] | None = None


ANY_SCORING = "any scoring (the gate names no scorers)"


def gate_scoring(gate: EvalGate) -> Scoring | None:
    """The scoring the gate's evidence must have, None for any (a gate set without scorers)."""
    if gate.scorers is None:
        return None
    return Scoring(tuple(gate.scorers), gate.pass_rule or {"all": True})


def gate_scoring_text(gate: EvalGate) -> str:
    scoring = gate_scoring(gate)
    return ANY_SCORING if scoring is None else describe(scoring)


class GateOut(Output):
    prompt: str
    state: str
    dataset: str
    dataset_version: int | None
    min_pass_rate: float | None
    no_regression: bool
    alpha: float
    scorers: list[dict[str, Any]] | None  # None: a run scored any way counts
    pass_rule: dict[str, Any] | None
    scoring: str  # the scoring the evidence must have, readably
    updated_by: str
    updated_at: datetime

    @classmethod
    def of(cls, prompt: str, gate: EvalGate) -> GateOut:
        return cls(
            prompt=prompt,
            state=gate.state,
            dataset=gate.dataset,
            dataset_version=gate.dataset_version,
            min_pass_rate=gate.min_pass_rate,
            no_regression=gate.no_regression,
            alpha=gate.alpha,
            scorers=gate.scorers,
            pass_rule=gate.pass_rule,
            scoring=gate_scoring_text(gate),
            updated_by=gate.updated_by,
            updated_at=gate.updated_at,
        )


class GateOverride(Input):
    reason: Reason
