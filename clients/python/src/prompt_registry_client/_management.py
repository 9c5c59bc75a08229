"""The request bodies of management calls that both clients send, built in one place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

UNSET: Any = object()  # "not given", where None is a value the API takes


def json_object(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise TypeError(f"a JSON object was expected, not {type(answer).__name__}")
    return answer


def promote_body(
    to: str, expected_current: int | None, reason: str | None, override_gate: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"to": to, "reason": reason}
    if override_gate is not None:
        body["override_gate"] = override_gate
    if expected_current is not UNSET:
        body["expected_current"] = expected_current
    return body


def gate_body(
    dataset: str,
    dataset_version: int | None,
    min_pass_rate: float | None,
    no_regression: bool,
    alpha: float,
    scorers: list[dict[str, Any]] | None,
    pass_rule: dict[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataset": {"name": dataset, "version": dataset_version},
        "min_pass_rate": min_pass_rate,
        "no_regression": no_regression,
        "alpha": alpha,
    }
    if scorers is not None:
        body["scorers"] = scorers
    if pass_rule is not None:
        body["pass_rule"] = pass_rule
    return body


def eval_run_body(
    prompt: str,
    version: int,
    dataset: str,
    scorers: list[dict[str, Any]],
    dataset_version: int | None,
    config_version: int | None,
    config: Mapping[str, Any] | None,
    pass_rule: Mapping[str, Any] | None,
    concurrency: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": prompt,
        "version": version,
        "dataset": {"name": dataset, "version": dataset_version},
        "scorers": scorers,
        "config_version": config_version,
        "pass_rule": dict(pass_rule) if pass_rule is not None else None,
    }
    if config is not None:
        body["config"] = dict(config)
    if concurrency is not None:
        body["concurrency"] = concurrency
    return body


def enabled_param(enabled: bool | None) -> str | None:
    return None if enabled is None else str(enabled).lower()


def webhook_body(url: str, events: list[str], description: str) -> dict[str, Any]:
    return {"url": url, "events": list(events), "description": description}
