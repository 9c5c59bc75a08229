"""Promotion states of immutable versions, as a pure state machine.

``draft → staging → production → archived``. At most one version holds
``staging`` and one ``production`` (the database enforces it too); promoting
into a held state displaces the holder to ``archived``. Rollback is the one
way back from ``archived`` and always names a reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from registry.lib.errors import ConflictError, InvalidInputError


class State(StrEnum):
    DRAFT = "draft"
    STAGING = "staging"
    PRODUCTION = "production"
    ARCHIVED = "archived"


HELD_STATES = (State.STAGING, State.PRODUCTION)

# Allowed promote moves (rollback has its own rule).
_PROMOTIONS: Mapping[State, frozenset[State]] = {
    State.DRAFT: frozenset({State.STAGING, State.PRODUCTION, State.ARCHIVED}),
    State.STAGING: frozenset({State.PRODUCTION, State.ARCHIVED}),
    State.PRODUCTION: frozenset({State.ARCHIVED}),
    State.ARCHIVED: frozenset(),
}

Action = Literal["promote", "rollback", "displace"]


class InvalidTransitionError(ConflictError):
    """The version's current state does not allow this move."""

    type = "invalid_transition"
    title = "Invalid state transition"


class StaleExpectationError(ConflictError):
    """``expected_current`` does not name the version that holds the state now."""

    type = "stale_expected_current"
    title = "Current version changed"


@dataclass(frozen=True, slots=True)
class StateChange:
    number: int
    from_state: State
    to_state: State
    action: Action


def plan_promotion(
    *,
    target: int,
    target_state: State,
    to: State,
    holders: Mapping[State, int],
    expected_current: int | None,
    check_expected: bool,
) -> list[StateChange]:
    """The state changes that move version ``target`` to ``to``; empty when it is already there.

    ``holders`` maps staging/production to the version holding it now. When
    ``check_expected`` is set, ``expected_current`` must equal the holder of ``to``.
    """
    holder = holders.get(to)
    if check_expected and to in HELD_STATES and expected_current != holder:
        raise StaleExpectationError(
            f"{to.value} is held by {_describe(holder)}, not {_describe(expected_current)}; "
            "re-read the current version and retry",
            current=holder,
        )
    if target_state == to:
        return []
    if to not in _PROMOTIONS[target_state]:
        hint = " (use rollback to bring back an archived version)" if target_state == State.ARCHIVED else ""
        article = "an" if target_state.value[0] in "aeiou" else "a"
        raise InvalidTransitionError(f"cannot move {article} {target_state.value} version to {to.value}{hint}")
    return _with_displacement(target, target_state, to, holder, "promote")


def plan_rollback(
    *,
    target: int,
    target_state: State,
    holders: Mapping[State, int],
    expected_current: int | None,
    check_expected: bool,
    was_in_production: bool,
) -> list[StateChange]:
    """Changes that bring an earlier production version back to production."""
    holder = holders.get(State.PRODUCTION)
    if check_expected and expected_current != holder:
        raise StaleExpectationError(
            f"production is held by {_describe(holder)}, not {_describe(expected_current)}; "
            "re-read the current version and retry",
            current=holder,
        )
    if holder == target:
        raise InvalidTransitionError(f"version {target} is already in production")
    if not was_in_production:
        raise InvalidInputError(f"version {target} was never in production; promote it instead of rolling back to it")
    return _with_displacement(target, target_state, State.PRODUCTION, holder, "rollback")


def _with_displacement(
    target: int, target_state: State, to: State, holder: int | None, action: Action
) -> list[StateChange]:
    changes: list[StateChange] = []
    if to in HELD_STATES and holder is not None and holder != target:
        changes.append(StateChange(holder, to, State.ARCHIVED, "displace"))
    changes.append(StateChange(target, target_state, to, action))
    return changes


def _describe(number: int | None) -> str:
    return "no version" if number is None else f"version {number}"
