"""An experiment's winner that was archived while the experiment ran, behind an evaluation gate on production.

Bringing an archived version back is a rollback, which a person may use without the gate (an emergency way
back); an experiment's winner is a promotion all the same, so its stop must show the gate's evidence whatever
state the winner is in, and a refusal leaves the experiment running and production where it was.
"""

from __future__ import annotations

from tests.conftest import AppClient, problem
from tests.evals.conftest import answers, dataset, evals, finished, ok, publish, start_run  # noqa: F401 - fixture
from tests.evals.conftest import stand_in as stand_in  # the evaluations' stand-in backend

Headers = dict[str, str]


async def archived_winner(client: AppClient, headers: Headers, prompt: str) -> None:
    """Version 1 of ``prompt`` in production, an experiment of version 1 ('control') against version 2, then
    version 2 promoted by hand, which archives version 1, and a gate on production: every item must pass."""
    first = await publish(client, headers, prompt)
    second = await publish(client, headers, prompt, template=" {{ answer }}")
    assert (first, second) == (1, 2)
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post(f"/v1/prompts/{prompt}/versions/1/promote", json=promote, headers=headers))
    await ok(await client.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}, headers=headers))
    experiment = {
        "key": f"{prompt}-test",
        "prompt": prompt,
        "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
        "primary_metric": "converted",
    }
    await ok(await client.post("/v1/experiments", json=experiment, headers=headers))
    await ok(await client.post(f"/v1/experiments/{prompt}-test/start", headers=headers))
    promote = {"to": "production", "expected_current": 1}
    await ok(await client.post(f"/v1/prompts/{prompt}/versions/2/promote", json=promote, headers=headers))
    await dataset(client, headers, f"{prompt}-cases", answers(("y", "y")))
    gate = {"dataset": {"name": f"{prompt}-cases"}, "min_pass_rate": 1.0}
    await ok(await client.put(f"/v1/prompts/{prompt}/gates/production", json=gate, headers=headers))
    assert await states(client, headers, prompt) == {1: "archived", 2: "production"}


async def states(client: AppClient, headers: Headers, prompt: str) -> dict[int, str]:
    listed = await ok(await client.get(f"/v1/prompts/{prompt}/versions", headers=headers))
    return {v["version"]: v["state"] for v in listed["items"]}


async def history(client: AppClient, headers: Headers, prompt: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = (await ok(await client.get(f"/v1/prompts/{prompt}/history", headers=headers)))[
        "items"
    ]
    return items


async def promotions_audited(client: AppClient, headers: Headers, prompt: str) -> list[int]:
    """The ids of the prompt's audit entries that moved a version."""
    query = {"resource_type": "prompt", "resource_name": prompt}
    found = await ok(await client.get("/v1/audit/", params=query, headers=headers))
    return [e["id"] for e in found["items"] if e["action"] in ("prompt.promote", "prompt.rollback")]


async def test_an_archived_winner_without_an_evaluation_run_is_refused_and_the_experiment_runs_on(
    evals: AppClient,  # noqa: F811
    admin: Headers,
) -> None:
    await archived_winner(evals, admin, "back")
    moves = await history(evals, admin, "back")
    audited = await promotions_audited(evals, admin, "back")

    stopped = await evals.post("/v1/experiments/back-test/stop", json={"winner": "control"}, headers=admin)

    assert stopped.status_code == 422, stopped.text
    details = problem(stopped)
    assert details["type"] == "/problems/gate_failed"
    assert details["failures"] == [
        "no completed evaluation run of version 1 with config back-config@1 on dataset back-cases@1"
    ]
    experiment = await ok(await evals.get("/v1/experiments/back-test", headers=admin))
    assert (experiment["status"], experiment["winner"]) == ("running", None)
    assert await states(evals, admin, "back") == {1: "archived", 2: "production"}
    assert await history(evals, admin, "back") == moves
    assert await promotions_audited(evals, admin, "back") == audited


async def test_an_archived_winner_with_a_passing_run_on_the_gates_dataset_returns_to_production(
    evals: AppClient,  # noqa: F811
    admin: Headers,
) -> None:
    await archived_winner(evals, admin, "back")
    run = await start_run(evals, admin, prompt="back", version=1, dataset={"name": "back-cases"})
    done = await finished(evals, admin, run["id"])
    assert (done["status"], done["pass_rate"]) == ("completed", 1.0), done

    stopped = await evals.post("/v1/experiments/back-test/stop", json={"winner": "control"}, headers=admin)

    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["promoted"]["version"] == 1
    assert (await ok(await evals.get("/v1/experiments/back-test", headers=admin)))["status"] == "stopped"
    assert await states(evals, admin, "back") == {1: "production", 2: "archived"}
    latest = (await history(evals, admin, "back"))[0]
    assert (latest["version"], latest["to_state"]) == (1, "production")
    assert latest["reason"] == "experiment 'back-test' concluded: variant 'control' won"


async def test_a_rollout_of_an_archived_version_without_an_evaluation_run_pauses_at_the_end(
    evals: AppClient,  # noqa: F811
    admin: Headers,
) -> None:
    """A rollout may bring back an earlier production version (archived): its promotion passes the gate too (set
    here after the rollout started, which a gate refusing the candidate at once would have refused)."""
    await publish(evals, admin, "again")
    await publish(evals, admin, "again", template=" {{ answer }}")
    for number, holder in ((1, None), (2, 1)):
        promote = {"to": "production", "expected_current": holder}
        await ok(await evals.post(f"/v1/prompts/again/versions/{number}/promote", json=promote, headers=admin))
    await ok(await evals.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}, headers=admin))
    await dataset(evals, admin, "again-cases", answers(("y", "y")))
    body = {"candidate_version": 1, "steps": [{"share": 1.0}], "guardrails": [{"metric": "converted"}]}
    rollout = await ok(await evals.post("/v1/prompts/again/rollouts", json=body, headers=admin))
    gate = {"dataset": {"name": "again-cases"}, "min_pass_rate": 1.0}
    await ok(await evals.put("/v1/prompts/again/gates/production", json=gate, headers=admin))
    moves = await history(evals, admin, "again")

    moved = await ok(await evals.post(f"/v1/rollouts/{rollout['id']}/advance", headers=admin))

    assert moved["status"] == "paused"
    assert moved["reason"].startswith("the candidate's promotion was refused")
    assert "no completed evaluation run of version 1 with config again-config@1" in moved["reason"]
    assert await states(evals, admin, "again") == {1: "archived", 2: "production"}
    assert await history(evals, admin, "again") == moves
