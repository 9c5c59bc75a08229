"""A progressive rollout's plan, without I/O: who gets the candidate, and what a check does next.

- ``included_in_rollout`` is GrowthBook's percentage rollout (``isIncludedInRollout`` with a
  coverage): a unit gets the candidate when its hash under the rollout's fixed seed is at most the
  step's share. The seed never changes during a rollout, so a unit that got the candidate at 5% still
  has it at 25%, 50% and 100%: the share only grows, and the same on every replica and after restarts.
- ``next_action`` is what a check does, given the guardrails' decision: roll back at once when it says
  so; otherwise move on once the step has lasted its minimum duration and reached its minimum units
  (to the next step, or after the last one to the promotion), and hold until then.
- ``lacking_data`` is the evidence a step needs besides its minimums: every guardrail observed in at least
  one unit of each arm it compares (``MIN_OBSERVED``). A guardrail with no data cannot fail, so without this
  a rollout whose metrics never arrived (a broken source, a metric nobody sends) would pass every step on
  no evidence at all; it holds instead, saying which guardrail lacks data in which arm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from prompt_registry_client.assignment import gb_hash

from registry.stats.guardrails import GuardrailDecision

HASH_VERSION = 2


def included_in_rollout(seed: str, unit: str, share: float) -> bool:
    """Whether ``unit`` gets the candidate at ``share`` (GrowthBook: no unit at 0, ``hash <= share`` otherwise)."""
    if share <= 0 or not unit:
        return False
    bucket = gb_hash(seed, unit, HASH_VERSION)
    return bucket is not None and bucket <= share


def rollout_ranges(share: float) -> list[tuple[float, float]]:
    """``included_in_rollout`` as GrowthBook bucket ranges (production, candidate), for SDKs that assign locally.

    The candidate's range is ``[0, end)`` where ``end`` is the least hash above ``share``: hashes of version 2
    are multiples of 1/10000, so ``hash < end`` holds exactly when ``hash <= share``.
    """
    if share <= 0:
        return [(0.0, 1.0), (0.0, 0.0)]
    step = 10000
    end = int(share * step)
    while end / step <= share:
        end += 1
    while end > 0 and (end - 1) / step > share:
        end -= 1
    bound = min(end / step, 1.0)
    return [(bound, 1.0), (0.0, bound)]


@dataclass(frozen=True, slots=True)
class Step:
    """A share of production traffic for the candidate, held for at least ``min_seconds`` and ``min_units``."""

    share: float
    min_seconds: float = 0.0
    min_units: int = 0


def step_problems(steps: Sequence[Step]) -> list[tuple[str, str]]:
    """What is wrong with a plan, as (field, message): shares rising strictly within (0, 1] and ending at 1."""
    if not steps:
        return [("steps", "a rollout needs at least one step")]
    problems: list[tuple[str, str]] = []
    previous = 0.0
    for i, step in enumerate(steps):
        if not previous < step.share <= 1:
            problems.append(
                (f"steps[{i}].share", f"must be above the previous step's share ({previous:g}) and at most 1")
            )
        if step.min_seconds < 0:
            problems.append((f"steps[{i}].min_seconds", "must not be negative"))
        if step.min_units < 0:
            problems.append((f"steps[{i}].min_units", "must not be negative"))
        previous = max(previous, step.share)
    if steps[-1].share != 1:
        problems.append((f"steps[{len(steps) - 1}].share", "the last step gives the candidate all traffic (1)"))
    return problems


# Units of an arm with a value of a guardrail's metric (as its test counts them: every exposed unit for a metric that
# counts a unit without events as 0, the units with a value otherwise) before the step may move on.
MIN_OBSERVED = 1
ARMS = ("production", "candidate")


def lacking_data(observed: Mapping[str, Mapping[str, int]], arms: Sequence[str] = ARMS) -> dict[str, list[str]]:
    """The guardrails (metric -> arms) with fewer than ``MIN_OBSERVED`` units in one of ``arms``.

    ``observed`` maps each guardrail's metric to its units per arm in the current step; ``arms`` are the ones the
    step compares (both, except at full share, where production has no traffic and the candidate alone is seen).
    """
    found: dict[str, list[str]] = {}
    for metric, units in observed.items():
        lacking = [arm for arm in arms if units.get(arm, 0) < MIN_OBSERVED]
        if lacking:
            found[metric] = lacking
    return found


def lacking_reasons(lacking: Mapping[str, Sequence[str]]) -> list[str]:
    return [
        f"guardrail '{metric}' has no data yet in the {' and the '.join(arms)} arm{'s' if len(arms) > 1 else ''}"
        for metric, arms in lacking.items()
    ]


ActionKind = Literal["rollback", "hold", "advance", "promote"]


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    step: int  # the step the rollout is at after the action
    reasons: list[str] = field(default_factory=list)


def next_action(
    steps: Sequence[Step],
    current: int,
    *,
    started_at: datetime,
    now: datetime,
    units: int,
    decision: GuardrailDecision,
    lacking: Mapping[str, Sequence[str]] | None = None,
) -> Action:
    """What a check does at step ``current`` (started at ``started_at``, ``units`` seen in it so far); ``lacking``:
    the guardrails without data (``lacking_data``), which hold the step whatever its minimums."""
    if decision.rollback:
        return Action("rollback", current, decision.reasons)
    step = steps[current]
    waiting: list[str] = []
    elapsed = (now - started_at).total_seconds()
    if elapsed < step.min_seconds:
        waiting.append(f"{step.min_seconds - elapsed:.0f} s of the step's minimum duration left")
    if units < step.min_units:
        waiting.append(f"{step.min_units - units} of the step's minimum units to go")
    waiting += lacking_reasons(lacking or {})
    if waiting:
        return Action("hold", current, waiting)
    if current == len(steps) - 1:
        return Action("promote", current)
    return Action("advance", current + 1)
