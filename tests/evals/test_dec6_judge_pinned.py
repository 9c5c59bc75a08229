"""A run pins its judge as it pins its own config: the judge prompt's label and its config's latest version are
resolved when the run starts, so a promotion of the judge during the run does not change how later items are
graded, and a judge that cannot be resolved is refused at once, naming the scorer's field."""

from __future__ import annotations

import uuid

from tests.conftest import AppClient
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run


async def test_a_runs_judge_is_pinned_when_the_run_starts(evals: AppClient, admin: dict[str, str]) -> None:
    name = f"pin-{uuid.uuid4().hex[:6]}"
    grader = f"{name}-grader"
    judge = await publish(evals, admin, grader, template='{"score": 1, "reason": "fine"}')
    promote = {"to": "production", "expected_current": None}
    await ok(await evals.post(f"/v1/prompts/{grader}/versions/{judge}/promote", json=promote, headers=admin))
    version = await publish(evals, admin, name)
    await dataset(evals, admin, f"{name}-cases", answers(("a", "a")))
    base = {"prompt": name, "version": version, "dataset": {"name": f"{name}-cases"}}
    scorers = [{"kind": "judge", "prompt": grader, "config": f"{grader}-config"}]
    run = await start_run(evals, admin, **base, scorers=scorers)
    assert run["scorers"][0]["version"] == judge
    assert run["scorers"][0]["config_version"] == 1
    assert "label" not in run["scorers"][0]
    done = await finished(evals, admin, run["id"])
    assert done["items_passed"] == 1
    refused = await evals.post(
        "/v1/evals/runs",
        json={**base, "scorers": [{"kind": "judge", "prompt": grader, "label": "staging"}]},
        headers=admin,
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "scorers[0].label"
