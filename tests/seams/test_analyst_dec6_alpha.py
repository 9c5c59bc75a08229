"""An experiment's level so small that its intervals are no longer numbers is refused where it is set."""

from __future__ import annotations

from tests.conftest import AppClient
from tests.experiments.conftest import experiment_body, make_metric, make_prompt

Headers = dict[str, str]


async def test_an_alpha_below_one_in_a_million_is_refused_naming_alpha(client: AppClient, admin: Headers) -> None:
    """alpha 1e-300 was taken (only > 0 was asked): 1 - alpha / 2 rounds to 1, the t and normal quantiles are
    infinite, and every interval in the results (variants, effects, credible) came back as null."""
    await make_prompt(client, admin, "dec6-alpha")
    await make_metric(client, admin, "converted")
    body = experiment_body("dec6-alpha-tiny", "dec6-alpha", alpha=1e-300)
    response = await client.post("/v1/experiments", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [error["field"] for error in response.json()["errors"]] == ["alpha"]
    body = experiment_body("dec6-alpha-small", "dec6-alpha", alpha=1e-6)
    response = await client.post("/v1/experiments", json=body, headers=admin)
    assert response.status_code == 201, response.text
