"""A control whose mean is nearly 0: the comparison keeps its absolute effect instead of failing the results."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from registry.stats import Arm, Moments, RatioMoments, compare, welch_dof
from tests.conftest import AppClient
from tests.experiments.conftest import flush_and_aggregate, make_experiment, make_metric, make_prompt

Headers = dict[str, str]


async def test_a_control_mean_of_1e_minus_91_gives_results_without_a_relative_effect(
    client: AppClient, admin: Headers
) -> None:
    """One control unit's value 1e-90 made the control's mean 3e-91, whose fourth power is 0: the delta method's
    division raised ZeroDivisionError and GET results answered 500 for the whole experiment."""
    await make_prompt(client, admin, "dec6-tiny")
    await make_metric(client, admin, "converted")
    await make_metric(client, admin, "dec6-spend", kind="continuous", aggregation="sum")
    await make_experiment(client, admin, "dec6-tiny-x", "dec6-tiny", guardrail_metrics=["dec6-spend"])
    exposures = [
        {"experiment": "dec6-tiny-x", "unit": f"dec6-{variant}-{i}", "variant": variant}
        for variant in ("control", "treatment")
        for i in range(3)
    ]
    response = await client.post("/v1/exposures", json={"exposures": exposures}, headers=admin)
    assert response.status_code == 202, response.text
    now = datetime.now(UTC).isoformat()
    values = {"dec6-control-0": 1e-90, "dec6-treatment-0": 2.0, "dec6-treatment-1": 3.0}
    events = [
        {"unit": unit, "metric": "dec6-spend", "value": value, "idempotency_key": f"dec6-tiny-{unit}", "timestamp": now}
        for unit, value in values.items()
    ]
    response = await client.post("/v1/events", json={"events": events}, headers=admin)
    assert response.status_code == 200, response.text
    await flush_and_aggregate(client)

    response = await client.get("/v1/experiments/dec6-tiny-x/results", headers=admin)
    assert response.status_code == 200, response.text
    spend = next(m for m in response.json()["metrics"] if m["metric"] == "dec6-spend")
    treatment = spend["variants"][1]["vs_control"]
    assert treatment["relative"] is None
    assert treatment["credible_interval"] is None
    assert abs(treatment["absolute"]["estimate"] - 5 / 3) < 1e-12
    assert treatment["absolute"]["ci_low"] < treatment["absolute"]["estimate"] < treatment["absolute"]["ci_high"]

    # A ratio metric's denominators that close to 0 have no variance to speak of, rather than raising.
    assert RatioMoments.of_sums(3, 1.0, 1.0, 1e-90, 1e-180, 1e-90).variance == 0.0


def test_values_near_1e_minus_100_are_compared_and_huge_variances_keep_their_degrees_of_freedom() -> None:
    """Welch's degrees of freedom squared the squared standard errors: 1e-200 squared is 0, so metric values near
    1e-100 raised ZeroDivisionError (the results answered 500); 1e200 squared is infinite (NaN degrees)."""
    comparison = compare(Arm(Moments(3, 3e-100, 5e-200)), Arm(Moments(3, 4e-100, 7e-200)))
    assert comparison.absolute.ci_low < comparison.absolute.estimate < comparison.absolute.ci_high
    assert welch_dof(1e-200, 3, 2e-200, 3) == pytest.approx(welch_dof(1.0, 3, 2.0, 3)) == pytest.approx(3.6)
    assert welch_dof(1e200, 3, 2e200, 3) == pytest.approx(3.6)
