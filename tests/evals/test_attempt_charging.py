"""A usage record made in an evaluation item's task is charged to its attempt once (``charge_attempt``).

Each of a run's completion services (the prompt's, each judge's) registers the charge with the usage recorder
(``charging``); the recorder keeps one registration, so a record is not charged once per service.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker

from registry.completions.usage import UsageRecorder
from registry.evals import runner
from registry.evals.runner import Attempt, charge_attempt


def record(**fields: Any) -> dict[str, Any]:
    return {"api_key_id": "eval-key", "status": "ok", **fields}


def test_a_record_is_charged_once_to_the_attempt_of_its_task_however_often_the_charge_was_registered() -> None:
    recorder = UsageRecorder(async_sessionmaker())
    recorder.on_added(charge_attempt)
    recorder.on_added(charge_attempt)
    attempt = Attempt()

    recorder.add(record(input_tokens=7, output_tokens=7, cost=9.0))  # no item's attempt in this task: not charged
    token = runner._attempt.set(attempt)
    try:
        recorder.add(record(input_tokens=5, output_tokens=2, cost=0.7))
    finally:
        runner._attempt.reset(token)

    assert (attempt.completions, attempt.input_tokens, attempt.output_tokens) == (1, 5, 2)
    assert attempt.cost == pytest.approx(0.7)
    assert recorder.pending_spend("eval-key") == (21, pytest.approx(9.7))
