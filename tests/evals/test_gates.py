"""Promotion gates through the API: refused without evidence or on weak evidence, accepted on a run that
meets the gate, overridden only by an admin with a reason; an experiment's winner passes the same gate."""

from __future__ import annotations

from typing import Any

import httpx

from registry.auth.keys import Scope
from tests.conftest import AppClient, KeyFactory, problem
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run

Headers = dict[str, str]


async def promote(
    client: httpx.AsyncClient, headers: Headers, name: str, version: int, **fields: Any
) -> httpx.Response:
    current = (await client.get(f"/v1/prompts/{name}/versions", params={"state": "production"}, headers=headers)).json()
    expected = current["items"][0]["version"] if current["items"] else None
    body = {"to": "production", "expected_current": expected, **fields}
    return await client.post(f"/v1/prompts/{name}/versions/{version}/promote", json=body, headers=headers)


async def evaluate(
    client: httpx.AsyncClient, headers: Headers, prompt: str, version: int, data: str, **fields: Any
) -> dict[str, Any]:
    """The finished run of ``version`` on dataset ``data`` (``fields``: more of the run's body, e.g. its config)."""
    run = await start_run(client, headers, prompt=prompt, version=version, dataset={"name": data}, **fields)
    return await finished(client, headers, run["id"])


async def gate(client: httpx.AsyncClient, headers: Headers, prompt: str, **fields: Any) -> dict[str, Any]:
    return await ok(await client.put(f"/v1/prompts/{prompt}/gates/production", json=fields, headers=headers))


async def test_a_gate_refuses_a_version_without_a_run_and_accepts_it_once_a_run_meets_it(
    evals: AppClient, admin: Headers
) -> None:
    version = await publish(evals, admin, "gated")
    await dataset(evals, admin, "gated-cases", answers(*[("y", "y")] * 5))
    body = await gate(evals, admin, "gated", dataset={"name": "gated-cases"}, min_pass_rate=0.8)
    assert (body["dataset_version"], body["min_pass_rate"]) == (None, 0.8)
    refused = await promote(evals, admin, "gated", version)
    assert refused.status_code == 422
    details = problem(refused)
    assert details["type"] == "/problems/gate_failed"
    assert "no completed evaluation run of version 1 with config gated-config@1" in details["detail"]
    await evaluate(evals, admin, "gated", version, "gated-cases")
    assert (await promote(evals, admin, "gated", version)).status_code == 200
    assert (await evals.get("/v1/prompts/gated/gates/production", headers=admin)).json()["dataset"] == "gated-cases"
    assert (await evals.get("/v1/prompts/gated/gates/staging", headers=admin)).status_code == 404


async def test_a_pass_rate_below_the_minimum_is_refused_naming_the_run_and_its_numbers(
    evals: AppClient, admin: Headers
) -> None:
    version = await publish(evals, admin, "weak")
    await dataset(evals, admin, "weak-cases", answers(*[("y", "y")] * 7, *[("n", "y")] * 3))
    await gate(evals, admin, "weak", dataset={"name": "weak-cases", "version": 1}, min_pass_rate=0.8)
    run = await evaluate(evals, admin, "weak", version, "weak-cases")
    refused = await promote(evals, admin, "weak", version)
    details = problem(refused)
    assert details["type"] == "/problems/gate_failed"
    assert f"run {run['id']}, 7 of 10 items passed" in details["detail"]
    assert details["evidence"]["run_id"] == run["id"]
    assert details["evidence"]["pass_rate"] == 0.7
    assert details["failures"] == [details["detail"].split(": ", 1)[1]]


async def test_a_run_with_another_config_version_is_no_evidence(evals: AppClient, admin: Headers) -> None:
    version = await publish(evals, admin, "other-config")
    await publish(evals, admin, "other-config-2", config="other-config-config", params={"max_tokens": 32})
    await dataset(evals, admin, "other-cases", answers(("y", "y")))
    await gate(evals, admin, "other-config", dataset={"name": "other-cases"}, min_pass_rate=0.5)
    run = await start_run(
        evals, admin, prompt="other-config", version=version, config_version=2, dataset={"name": "other-cases"}
    )
    assert (await finished(evals, admin, run["id"]))["pass_rate"] == 1.0
    assert (await promote(evals, admin, "other-config", version)).status_code == 422


async def test_a_run_with_another_config_is_evidence_for_comparisons_not_for_the_gate(
    evals: AppClient, admin: Headers
) -> None:
    version = await publish(evals, admin, "crossed")
    await publish(evals, admin, "rival-holder", config="rival")  # config "rival" v1, on the same stand-in model
    await dataset(evals, admin, "crossed-cases", answers(("y", "y"), ("y", "y")))
    await gate(evals, admin, "crossed", dataset={"name": "crossed-cases"}, min_pass_rate=0.5)
    rival = await evaluate(evals, admin, "crossed", version, "crossed-cases", config={"name": "rival", "version": 1})
    assert rival["pass_rate"] == 1.0

    refused = await promote(evals, admin, "crossed", version)
    assert refused.status_code == 422
    assert "no completed evaluation run of version 1 with config crossed-config@1" in problem(refused)["detail"]

    own = await evaluate(evals, admin, "crossed", version, "crossed-cases")
    compared = await evals.get("/v1/evals/compare", params={"base": own["id"], "candidate": rival["id"]}, headers=admin)
    assert (await ok(compared))["paired_items"] == 2  # the same prompt version on two configs, item by item
    assert (await promote(evals, admin, "crossed", version)).status_code == 200


async def bare_version(client: httpx.AsyncClient, headers: Headers, prompt: str, template: str = "{{ answer }}") -> int:
    """A new version of ``prompt`` (created if need be) that links no model config: the app renders it only."""
    if (await client.get(f"/v1/prompts/{prompt}/versions", headers=headers)).status_code == 404:
        await ok(await client.post("/v1/prompts", json={"name": prompt}, headers=headers))
    body = {"kind": "chat", "messages": [{"role": "user", "content": template}]}
    number: int = (await ok(await client.post(f"/v1/prompts/{prompt}/versions", json=body, headers=headers)))["version"]
    return number


async def test_a_version_without_a_config_passes_its_gate_with_a_run_on_any_config(
    evals: AppClient, admin: Headers
) -> None:
    await publish(evals, admin, "lender", config="lent")
    version = await bare_version(evals, admin, "bare")
    await dataset(evals, admin, "bare-cases", answers(("y", "y")))
    await gate(evals, admin, "bare", dataset={"name": "bare-cases"}, min_pass_rate=0.5)

    refused = await promote(evals, admin, "bare", version)
    assert refused.status_code == 422
    assert problem(refused)["failures"] == [
        "no completed evaluation run of version 1 with any config on dataset bare-cases@1 "
        "(it links no model config, so a run with any config counts)"
    ]

    run = await evaluate(evals, admin, "bare", version, "bare-cases", config={"name": "lent", "version": 1})
    assert (run["pass_rate"], run["config"], run["config_version"]) == (1.0, "lent", 1)
    assert (await promote(evals, admin, "bare", version)).status_code == 200


async def test_a_version_without_a_config_is_judged_against_the_holders_run_on_the_same_config(
    evals: AppClient, admin: Headers
) -> None:
    for config in ("left", "right", "solo"):
        await publish(evals, admin, f"{config}-lender", config=config)
    items = [{"variables": {"answer": "ok", "other": "ok" if i >= 8 else "bad"}, "expected": "ok"} for i in range(12)]
    await dataset(evals, admin, "render-cases", items)
    holder = await bare_version(evals, admin, "render", "{{ answer }}{{ other[:0] }}")
    candidate = await bare_version(evals, admin, "render", "{{ other }}{{ answer[:0] }}")
    right = await evaluate(evals, admin, "render", holder, "render-cases", config={"name": "right", "version": 1})
    left = await evaluate(evals, admin, "render", holder, "render-cases", config={"name": "left", "version": 1})
    assert (right["pass_rate"], left["pass_rate"]) == (1.0, 1.0)
    assert (await promote(evals, admin, "render", holder)).status_code == 200  # not gated yet
    await gate(evals, admin, "render", dataset={"name": "render-cases"}, no_regression=True, alpha=0.05)

    await evaluate(evals, admin, "render", candidate, "render-cases", config={"name": "solo", "version": 1})
    unpaired = problem(await promote(evals, admin, "render", candidate))
    assert unpaired["failures"] == [
        "production version 1 on config solo@1 has no completed run on this dataset version to compare with"
    ]  # the holder's runs on left and right are not paired with a run on solo

    run = await evaluate(evals, admin, "render", candidate, "render-cases", config={"name": "right", "version": 1})
    refused = await promote(evals, admin, "render", candidate)
    assert refused.status_code == 422
    details = problem(refused)
    regression = details["evidence"]["no_regression"]
    assert regression["baseline"] == f"production version 1 on config right@1 (run {right['id']})"  # not {left}
    assert (regression["pass_to_fail"], regression["fail_to_pass"]) == (8, 0)
    assert (details["evidence"]["run_id"], details["evidence"]["config"]) == (run["id"], "right@1")


async def test_a_version_with_a_config_is_judged_against_a_holder_without_one_on_its_own_config(
    evals: AppClient, admin: Headers
) -> None:
    await dataset(evals, admin, "linked-cases", answers(("y", "y"), ("y", "y")))
    holder = await bare_version(evals, admin, "linked", "{{ answer }} ")  # not the candidate's content
    candidate = await publish(evals, admin, "linked")  # config linked-config v1
    assert (await promote(evals, admin, "linked", holder)).status_code == 200
    await gate(evals, admin, "linked", dataset={"name": "linked-cases"}, no_regression=True, alpha=0.05)
    await evaluate(evals, admin, "linked", candidate, "linked-cases")

    refused = await promote(evals, admin, "linked", candidate)
    assert problem(refused)["failures"] == [
        "production version 1 on config linked-config@1 has no completed run on this dataset version to compare with"
    ]

    await evaluate(evals, admin, "linked", holder, "linked-cases", config={"name": "linked-config", "version": 1})
    assert (await promote(evals, admin, "linked", candidate)).status_code == 200


async def test_a_regression_against_production_is_refused_unless_an_admin_overrides_it_with_a_reason(
    evals: AppClient, admin: Headers, make_key: KeyFactory
) -> None:
    items = [{"variables": {"answer": "ok", "other": "ok" if i >= 8 else "bad"}, "expected": "ok"} for i in range(12)]
    await dataset(evals, admin, "regress-cases", items)
    current = await publish(evals, admin, "regress", template="{{ answer }}{{ other[:0] }}")
    candidate = await publish(evals, admin, "regress", template="{{ other }}{{ answer[:0] }}")
    await evaluate(evals, admin, "regress", current, "regress-cases")
    assert (await promote(evals, admin, "regress", current)).status_code == 200  # not gated yet
    await gate(evals, admin, "regress", dataset={"name": "regress-cases"}, no_regression=True, alpha=0.05)
    run = await evaluate(evals, admin, "regress", candidate, "regress-cases")

    refused = await promote(evals, admin, "regress", candidate)
    details = problem(refused)
    assert refused.status_code == 422
    assert "production version 1 (run 1)" in details["detail"]
    regression = details["evidence"]["no_regression"]
    assert (regression["pass_to_fail"], regression["fail_to_pass"]) == (8, 0)
    assert regression["mcnemar_p_worse"] < 0.05
    assert details["evidence"]["run_id"] == run["id"]

    promoter = await make_key(Scope.PROMOTE, Scope.READ, name="promoter")
    forbidden = await promote(evals, promoter, "regress", candidate, override_gate="ship it")
    assert problem(forbidden)["type"] == "/problems/gate_override_forbidden"
    overridden = await promote(evals, admin, "regress", candidate, reason="hotfix", override_gate="legal deadline")
    assert overridden.status_code == 200, overridden.text
    history = (await evals.get("/v1/prompts/regress/history", headers=admin)).json()["items"]
    assert history[0]["reason"] == "hotfix (gate overridden: legal deadline)"
    audit = (await evals.get("/v1/audit", params={"resource_name": "regress"}, headers=admin)).json()["items"]
    overrides = [entry for entry in audit if entry["action"] == "prompt.gate_override"]
    assert [entry["after"]["reason"] for entry in overrides] == ["legal deadline"]
    assert overrides[0]["after"]["failures"] == details["failures"]


async def test_an_experiment_winner_passes_the_same_gate(evals: AppClient, admin: Headers) -> None:
    control = await publish(evals, admin, "duel")
    treatment = await publish(evals, admin, "duel", template="{{ answer }}!")
    assert (await promote(evals, admin, "duel", control)).status_code == 200
    await dataset(evals, admin, "duel-cases", answers(("y", "y")))
    await gate(evals, admin, "duel", dataset={"name": "duel-cases"}, min_pass_rate=1.0)
    await ok(await evals.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}, headers=admin))
    experiment = {
        "key": "duel-test",
        "prompt": "duel",
        "variants": [{"key": "control", "prompt_version": control}, {"key": "treatment", "prompt_version": treatment}],
        "primary_metric": "converted",
    }
    await ok(await evals.post("/v1/experiments", json=experiment, headers=admin))
    await ok(await evals.post("/v1/experiments/duel-test/start", headers=admin))
    stop = {"winner": "treatment", "reason": "clear win"}
    refused = await evals.post("/v1/experiments/duel-test/stop", json=stop, headers=admin)
    assert problem(refused)["type"] == "/problems/gate_failed"
    assert (await evals.get("/v1/experiments/duel-test", headers=admin)).json()["status"] == "running"
    run = await evaluate(evals, admin, "duel", treatment, "duel-cases")
    assert run["pass_rate"] == 0.0  # "y!" is not "y": still refused, on the evidence now
    assert (
        "pass rate" in problem(await evals.post("/v1/experiments/duel-test/stop", json=stop, headers=admin))["detail"]
    )


async def with_config(client: httpx.AsyncClient, headers: Headers, prompt: str, version: int, config: str) -> int:
    """A new version of ``prompt`` with the content of ``version`` and config ``config``@1: what promoting the
    version as a rollout's candidate or an experiment's variant with that config creates."""
    content = await ok(await client.get(f"/v1/prompts/{prompt}/versions/{version}", headers=headers))
    body = {"kind": content["kind"], "messages": content["messages"], "config": {"name": config, "version": 1}}
    number: int = (await ok(await client.post(f"/v1/prompts/{prompt}/versions", json=body, headers=headers)))["version"]
    return number


async def test_a_version_passes_its_gate_on_the_run_of_a_version_with_the_same_content_and_its_config(
    evals: AppClient, admin: Headers
) -> None:
    await publish(evals, admin, "alt-user", config="alt")
    first = await publish(evals, admin, "twin")  # config twin-config@1
    await dataset(evals, admin, "twin-cases", answers(("y", "y")))
    await gate(evals, admin, "twin", dataset={"name": "twin-cases"}, min_pass_rate=1.0)
    run = await evaluate(evals, admin, "twin", first, "twin-cases", config={"name": "alt", "version": 1})
    assert run["pass_rate"] == 1.0
    twin = await with_config(evals, admin, "twin", first, "alt")

    refused = await promote(evals, admin, "twin", first)  # the same content was run, but with alt, not its config
    assert problem(refused)["failures"] == [
        f"no completed evaluation run of version {first} or of same-content version {twin} "
        "with config twin-config@1 on dataset twin-cases@1"
    ]

    promoted = await promote(evals, admin, "twin", twin, reason="alt is cheaper")
    assert promoted.status_code == 200, promoted.text
    history = (await evals.get("/v1/prompts/twin/history", headers=admin)).json()["items"]
    assert history[0]["reason"] == f"alt is cheaper (gate met by run {run['id']} of same-content version {first})"


async def test_a_refusal_on_a_same_content_versions_run_names_that_run(evals: AppClient, admin: Headers) -> None:
    await publish(evals, admin, "alt-user", config="alt")
    first = await publish(evals, admin, "short")
    await dataset(evals, admin, "short-cases", answers(("y", "y"), ("n", "y")))
    await gate(evals, admin, "short", dataset={"name": "short-cases"}, min_pass_rate=1.0)
    run = await evaluate(evals, admin, "short", first, "short-cases", config={"name": "alt", "version": 1})
    twin = await with_config(evals, admin, "short", first, "alt")

    details = problem(await promote(evals, admin, "short", twin))

    assert f"(run {run['id']} of same-content version {first}, 1 of 2 items passed)" in details["detail"]
    evidence = details["evidence"]
    assert (evidence["run_id"], evidence["run_prompt_version"], evidence["config"]) == (run["id"], first, "alt@1")


async def test_a_holder_is_judged_on_the_run_of_a_version_with_its_content_and_config(
    evals: AppClient, admin: Headers
) -> None:
    await publish(evals, admin, "alt-user", config="alt")
    items = [{"variables": {"answer": "ok", "other": "ok" if i >= 8 else "bad"}, "expected": "ok"} for i in range(12)]
    await dataset(evals, admin, "held-cases", items)
    first = await publish(evals, admin, "held", template="{{ answer }}{{ other[:0] }}")
    holder = await with_config(evals, admin, "held", first, "alt")  # production carries alt, as a winner would
    baseline = await evaluate(evals, admin, "held", first, "held-cases", config={"name": "alt", "version": 1})
    assert (await promote(evals, admin, "held", holder)).status_code == 200  # not gated yet
    await gate(evals, admin, "held", dataset={"name": "held-cases"}, no_regression=True, alpha=0.05)
    candidate = await publish(evals, admin, "held", template="{{ other }}{{ answer[:0] }}")
    await evaluate(evals, admin, "held", candidate, "held-cases")

    details = problem(await promote(evals, admin, "held", candidate))

    assert f"production version {holder} (run {baseline['id']} of same-content version {first})" in details["detail"]
    assert details["evidence"]["no_regression"]["pass_to_fail"] == 8
