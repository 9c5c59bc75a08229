"""Request and response bodies of rollouts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from registry.configs.schemas import ConfigRef
from registry.experiments.schemas import Alpha, MetricKey
from registry.lib.schema import Input, Output, Reason
from registry.lib.versioned_schemas import VersionNumber
from registry.rollouts.models import Rollout, RolloutEvent

Share = Annotated[float, msgspec.Meta(gt=0, le=1, description="The candidate's share of production traffic.")]


class StepIn(Input):
    share: Share
    min_seconds: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 0.0
    min_units: Annotated[int, msgspec.Meta(ge=0)] = 0


class GuardrailIn(Input):
    """A metric the candidate must not make worse than production by more than ``tolerance``."""

    metric: MetricKey
    # Which values are better (errors, latency, cost: lower); by default the metric's own direction, and one that
    # contradicts it is refused: it would roll back a candidate the metric calls better and keep one it calls worse.
    direction: Literal["lower", "higher"] | None = None
    tolerance: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    relative: bool = True  # the tolerance as a fraction of production's value (else in the metric's units)


class CreateRollout(Input):
    candidate_version: VersionNumber
    steps: Annotated[list[StepIn], msgspec.Meta(min_length=1, max_length=20)]
    guardrails: Annotated[list[GuardrailIn], msgspec.Meta(min_length=1, max_length=10)]
    config: ConfigRef | None = None  # the candidate's model config version (default: the version's own)
    alpha: Alpha = 0.05
    on_complete: Literal["promote"] = "promote"
    reason: Reason | None = None


class RolloutAction(Input):
    reason: Reason | None = None
    # The step the caller saw: the move is refused (409) when the rollout is at another, so an advance sent
    # twice (a double click, a retry after a lost answer) moves one step instead of skipping the next.
    expected_step: Annotated[int, msgspec.Meta(ge=0)] | None = None


class RolloutEventOut(Output):
    at: datetime
    action: str
    step: int
    actor: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, event: RolloutEvent) -> RolloutEventOut:
        return cls(at=event.at, action=event.action, step=event.step, actor=event.actor, detail=event.detail)


class LackingDataOut(Output):
    """A guardrail with no data yet in an arm at the current step: the rollout holds there until it has some."""

    metric: str
    arms: list[str]  # "production", "candidate"


def lacking_data_of(rollout: Rollout) -> list[LackingDataOut]:
    """What the latest check found lacking, while it speaks of the rollout's current step (a step moved by hand
    has not been checked yet) and the rollout may still move."""
    evidence = rollout.evidence or {}
    if not rollout.active or evidence.get("step") != rollout.step:
        return []
    return [LackingDataOut(metric=item["metric"], arms=list(item["arms"])) for item in evidence.get("lacking_data", [])]


class RolloutOut(Output):
    id: int
    prompt: str
    experiment: str  # the experiment backing the rollout: renders and completions name it with its variant
    status: str
    step: int
    share: float
    candidate_version: int
    production_version: int | None
    config: str | None
    config_version: int | None
    steps: list[dict[str, Any]]
    guardrails: list[dict[str, Any]]
    alpha: float
    step_started_at: datetime
    reason: str | None
    evidence: dict[str, Any] | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    ended_at: datetime | None
    events: list[RolloutEventOut] | None = None
    # The guardrails holding the current step for want of data (from the latest check; empty when none do).
    lacking_data: list[LackingDataOut] = msgspec.field(default_factory=list)

    @classmethod
    def of(cls, rollout: Rollout, events: list[RolloutEvent] | None = None) -> RolloutOut:
        return cls(
            id=rollout.id,
            prompt=rollout.prompt.name,
            experiment=rollout.experiment.key,
            status=rollout.status,
            step=rollout.step,
            share=rollout.steps[rollout.step]["share"],
            candidate_version=rollout.candidate_version,
            production_version=rollout.production_version,
            config=rollout.config,
            config_version=rollout.config_version,
            steps=rollout.steps,
            guardrails=rollout.guardrails,
            alpha=rollout.alpha,
            step_started_at=rollout.step_started_at,
            reason=rollout.reason,
            evidence=rollout.evidence,
            lacking_data=lacking_data_of(rollout),
            created_at=rollout.created_at,
            created_by=rollout.created_by,
            updated_at=rollout.updated_at,
            ended_at=rollout.ended_at,
            events=None if events is None else [RolloutEventOut.of(e) for e in events],
        )


class RolloutPage(Output):
    items: list[RolloutOut]
    next_cursor: str | None = None
