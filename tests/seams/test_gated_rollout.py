"""A rollout's candidate or an experiment's winner that runs with another config, ending in a promotion behind
an evaluation gate.

The promotion creates a version carrying that config (the same content as the candidate); the gate takes the
candidate's run with exactly that config as the new version's evidence, and nothing else: not a run of the
same content with another config, nor a run with that config of other content.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import AppClient, problem
from tests.evals.conftest import answers, dataset, evals, finished, ok, publish, start_run  # noqa: F401 - fixture
from tests.evals.conftest import stand_in as stand_in  # the evaluations' stand-in backend

Headers = dict[str, str]
ALT = {"name": "alt", "version": 1}


async def gated(client: AppClient, headers: Headers, prompt: str) -> tuple[int, int]:
    """Production (version 1) and a candidate of other content (version 2) of ``prompt``, each on a config of its
    own, a config alt@1 on the same stand-in model, and a gate on production: every item must pass."""
    control = await publish(client, headers, prompt)
    candidate = await publish(client, headers, prompt, template=" {{ answer }}")
    await publish(client, headers, "alt-user", config="alt")
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post(f"/v1/prompts/{prompt}/versions/{control}/promote", json=promote, headers=headers))
    await dataset(client, headers, f"{prompt}-cases", answers(("y", "y")))
    gate = {"dataset": {"name": f"{prompt}-cases"}, "min_pass_rate": 1.0}
    await ok(await client.put(f"/v1/prompts/{prompt}/gates/production", json=gate, headers=headers))
    await ok(await client.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}, headers=headers))
    return control, candidate


async def evaluate(client: AppClient, headers: Headers, prompt: str, version: int, **fields: Any) -> dict[str, Any]:
    """A finished run of ``version`` on the prompt's cases that passed them all."""
    data = {"name": f"{prompt}-cases"}
    run = await start_run(client, headers, prompt=prompt, version=version, dataset=data, **fields)
    done = await finished(client, headers, run["id"])
    assert done["pass_rate"] == 1.0, done
    return done


async def roll_out(client: AppClient, headers: Headers, prompt: str, candidate: int) -> dict[str, Any]:
    """A one-step rollout of ``candidate`` with config alt@1, advanced past its last step: the promotion."""
    steps = [{"share": 1.0}]
    body = {"candidate_version": candidate, "config": ALT, "steps": steps, "guardrails": [{"metric": "converted"}]}
    rollout = await ok(await client.post(f"/v1/prompts/{prompt}/rollouts", json=body, headers=headers))
    return await ok(await client.post(f"/v1/rollouts/{rollout['id']}/advance", headers=headers))


async def stop_with_winner(client: AppClient, headers: Headers, prompt: str, control: int, treatment: int) -> Any:
    """An experiment of ``control`` against ``treatment`` with config alt@1, stopped with the treatment as winner."""
    experiment = {
        "key": f"{prompt}-test",
        "prompt": prompt,
        "variants": [
            {"key": "control", "prompt_version": control},
            {"key": "treatment", "prompt_version": treatment, "config": ALT},
        ],
        "primary_metric": "converted",
    }
    await ok(await client.post("/v1/experiments", json=experiment, headers=headers))
    await ok(await client.post(f"/v1/experiments/{prompt}-test/start", headers=headers))
    return await client.post(f"/v1/experiments/{prompt}-test/stop", json={"winner": "treatment"}, headers=headers)


async def production(client: AppClient, headers: Headers, prompt: str) -> tuple[int, str, str]:
    """The production version's number, first message and config name."""
    version = (await ok(await client.get(f"/v1/prompts/{prompt}", headers=headers)))["version"]
    return version["version"], version["messages"][0]["content"], version["config"]["name"]


async def versions(client: AppClient, headers: Headers, prompt: str) -> list[int]:
    listed = await ok(await client.get(f"/v1/prompts/{prompt}/versions", headers=headers))
    return sorted(v["version"] for v in listed["items"])


async def test_a_candidate_evaluated_with_the_rollouts_config_passes_the_gate_at_the_end(
    evals: AppClient,  # noqa: F811
    admin: Headers,
) -> None:
    _, candidate = await gated(evals, admin, "roll")
    run = await evaluate(evals, admin, "roll", candidate, config=ALT)  # the candidate as the rollout runs it

    moved = await roll_out(evals, admin, "roll", candidate)

    assert moved["status"] == "completed", moved["reason"]
    assert await production(evals, admin, "roll") == (3, " {{ answer }}", "alt")  # a version carrying alt
    history = (await ok(await evals.get("/v1/prompts/roll/history", headers=admin)))["items"]
    assert history[0]["version"] == 3
    assert history[0]["reason"].endswith(f"(gate met by run {run['id']} of same-content version {candidate})")


async def test_an_experiment_variant_evaluated_with_its_config_passes_the_gate_as_the_winner(
    evals: AppClient,  # noqa: F811
    admin: Headers,
) -> None:
    control, treatment = await gated(evals, admin, "duel")
    run = await evaluate(evals, admin, "duel", treatment, config=ALT)

    stopped = await stop_with_winner(evals, admin, "duel", control, treatment)

    assert stopped.status_code == 200, stopped.text
    assert await production(evals, admin, "duel") == (3, " {{ answer }}", "alt")
    history = (await ok(await evals.get("/v1/prompts/duel/history", headers=admin)))["items"]
    assert history[0]["reason"] == (
        "experiment 'duel-test' concluded: variant 'treatment' won "
        f"(gate met by run {run['id']} of same-content version {treatment})"
    )


async def test_a_candidate_evaluated_only_with_another_config_is_refused_before_it_takes_traffic(
    evals: AppClient,  # noqa: F811
    admin: Headers,
) -> None:
    _, candidate = await gated(evals, admin, "roll")
    await evaluate(evals, admin, "roll", candidate)  # with its own config, not the rollout's

    steps = [{"share": 0.1}, {"share": 1.0}]
    body = {"candidate_version": candidate, "config": ALT, "steps": steps, "guardrails": [{"metric": "converted"}]}
    refused = await evals.post("/v1/prompts/roll/rollouts", json=body, headers=admin)

    assert refused.status_code == 422
    [error] = problem(refused)["errors"]
    assert error["field"] == "candidate_version"
    assert error["message"].startswith("its promotion at the rollout's end would be refused")
    assert (
        f"no completed evaluation run of version 3 or of same-content version {candidate} with config alt@1"
        in (error["message"])
    )
    assert (await ok(await evals.get("/v1/prompts/roll/rollouts", headers=admin)))["items"] == []
    listed = await ok(await evals.get("/v1/experiments", headers=admin))
    assert [e["key"] for e in listed["items"] if e["prompt"] == "roll"] == []  # its experiment went with it
    assert await versions(evals, admin, "roll") == [1, 2]


async def test_a_gate_set_during_the_rollout_pauses_it_at_the_end(
    evals: AppClient,  # noqa: F811
    admin: Headers,
) -> None:
    _, candidate = await gated(evals, admin, "roll")
    await evaluate(evals, admin, "roll", candidate, config=ALT)  # the evidence the gate asks for at the start
    body = {
        "candidate_version": candidate,
        "config": ALT,
        "steps": [{"share": 1.0}],
        "guardrails": [{"metric": "converted"}],
    }
    rollout = await ok(await evals.post("/v1/prompts/roll/rollouts", json=body, headers=admin))
    await dataset(evals, admin, "roll-harder", answers(("y", "n")))  # no run of the candidate on these yet
    gate = {"dataset": {"name": "roll-harder"}, "min_pass_rate": 1.0}
    await ok(await evals.put("/v1/prompts/roll/gates/production", json=gate, headers=admin))

    moved = await ok(await evals.post(f"/v1/rollouts/{rollout['id']}/advance", headers=admin))

    assert moved["status"] == "paused"
    assert moved["reason"].startswith("the candidate's promotion was refused")
    assert (await production(evals, admin, "roll"))[0] == 1
    assert await versions(evals, admin, "roll") == [1, 2]  # the version carrying alt went with the refusal


async def test_a_winner_whose_config_was_evaluated_only_with_other_content_is_refused(
    evals: AppClient,  # noqa: F811
    admin: Headers,
) -> None:
    control, treatment = await gated(evals, admin, "duel")
    await evaluate(evals, admin, "duel", control, config=ALT)  # alt@1, but the control's content

    stopped = await stop_with_winner(evals, admin, "duel", control, treatment)

    assert stopped.status_code == 422
    details = problem(stopped)
    assert details["type"] == "/problems/gate_failed"
    assert details["failures"] == [
        f"no completed evaluation run of version 3 or of same-content version {treatment} with config alt@1 "
        "on dataset duel-cases@1"
    ]
    assert (await ok(await evals.get("/v1/experiments/duel-test", headers=admin)))["status"] == "running"
    assert (await production(evals, admin, "duel"))[0] == 1
    assert await versions(evals, admin, "duel") == [1, 2]
