"""A gate names the scoring it takes as evidence: a run scored otherwise (a lenient scorer that always passes,
another judge version) is no evidence, and a regression test pairs only runs scored alike; a gate set without
scorers (every gate from before they could be named) takes a run scored any way, as it did."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AppClient, problem
from tests.evals.conftest import answers, dataset, ok, publish
from tests.evals.test_gates import evaluate, gate, promote

Headers = dict[str, str]

EXACT = [{"kind": "exact_match"}]
LENIENT = [{"kind": "not_contains", "value": "never-said"}]  # every output passes it


async def holder_of(evals: AppClient, admin: Headers, prompt: str) -> int:
    """The version holding production now."""
    held = await evals.get(f"/v1/prompts/{prompt}/versions", params={"state": "production"}, headers=admin)
    number: int = (await ok(held))["items"][0]["version"]
    return number


async def test_a_gate_naming_its_scorers_refuses_a_run_scored_by_an_always_passing_scorer(
    evals: AppClient, admin: Headers
) -> None:
    version = await publish(evals, admin, "lenient")
    await dataset(evals, admin, "lenient-cases", answers(*[("n", "y")] * 5))  # every answer is wrong
    await gate(evals, admin, "lenient", dataset={"name": "lenient-cases"}, min_pass_rate=0.8, scorers=EXACT)
    run = await evaluate(evals, admin, "lenient", version, "lenient-cases", scorers=LENIENT)
    assert run["pass_rate"] == 1.0

    refused = await promote(evals, admin, "lenient", version)

    assert refused.status_code == 422, refused.text
    details = problem(refused)
    assert details["type"] == "/problems/gate_failed"
    assert details["failures"] == [
        "no completed evaluation run of version 1 with config lenient-config@1 on dataset lenient-cases@1 scored as "
        f'the gate asks: run {run["id"]} was scored with not_contains(values=["never-said"]), '
        "the gate asks for exact_match"
    ]
    assert details["evidence"]["unlike_run_id"] == run["id"]
    assert details["evidence"]["gate"]["scorers"] == [
        {"kind": "exact_match", "weight": 1.0, "name": "exact_match", "case_sensitive": True, "strip": True}
    ]


async def test_the_newest_run_scored_as_the_gate_asks_is_its_evidence_whatever_the_order_of_its_scorers(
    evals: AppClient, admin: Headers
) -> None:
    version = await publish(evals, admin, "ordered")
    await dataset(evals, admin, "ordered-cases", answers(*[("y", "y")] * 4, ("n", "y")))
    scorers = [{"kind": "exact_match"}, {"kind": "length", "max": 100}]
    body = await gate(evals, admin, "ordered", dataset={"name": "ordered-cases"}, min_pass_rate=0.8, scorers=scorers)
    assert [spec["kind"] for spec in body["scorers"]] == ["exact_match", "length"]
    assert body["pass_rule"] == {"all": True}
    assert body["scoring"] == "exact_match, length(max=100)"
    audit = (await evals.get("/v1/audit", params={"resource_name": "ordered"}, headers=admin)).json()["items"]
    (entry,) = [entry for entry in audit if entry["action"] == "prompt.gate.set"]
    assert entry["after"]["scorers"] == body["scorers"]

    renamed = [{"kind": "length", "max": 100, "name": "short"}, {"kind": "exact_match", "name": "right"}]
    matching = await evaluate(evals, admin, "ordered", version, "ordered-cases", scorers=renamed)
    strict = [{"kind": "contains", "value": "never-said"}]  # newer, scored otherwise: no item passes it
    assert (await evaluate(evals, admin, "ordered", version, "ordered-cases", scorers=strict))["pass_rate"] == 0.0

    promoted = await promote(evals, admin, "ordered", version)

    assert promoted.status_code == 200, promoted.text
    assert matching["pass_rate"] == 0.8
    assert await holder_of(evals, admin, "ordered") == version


@pytest.mark.parametrize("named", [True, False], ids=["gate-naming-scorers", "gate-naming-none"])
async def test_no_regression_pairs_the_candidates_run_only_with_a_holders_run_scored_alike(
    evals: AppClient, admin: Headers, named: bool
) -> None:
    # Both versions fail the same 8 of 12 items on exact_match: no regression, item by item.
    items = [{"variables": {"answer": "ok" if i >= 8 else "bad"}, "expected": "ok"} for i in range(12)]
    await dataset(evals, admin, "paired-cases", items)
    holder = await publish(evals, admin, "paired", template="{{ answer }}")
    candidate = await publish(evals, admin, "paired", template="{{ answer }} ")  # stripped, it answers alike
    alike = await evaluate(evals, admin, "paired", holder, "paired-cases", scorers=EXACT)
    await evaluate(evals, admin, "paired", holder, "paired-cases", scorers=LENIENT)  # the holder's newest run
    assert (await promote(evals, admin, "paired", holder)).status_code == 200  # not gated yet
    fields: dict[str, Any] = {"scorers": EXACT} if named else {}
    await gate(evals, admin, "paired", dataset={"name": "paired-cases"}, no_regression=True, **fields)
    await evaluate(evals, admin, "paired", candidate, "paired-cases", scorers=EXACT)

    promoted = await promote(evals, admin, "paired", candidate)

    assert promoted.status_code == 200, promoted.text  # against the holder's lenient run, 8 items would regress
    assert await holder_of(evals, admin, "paired") == candidate
    log = (await evals.get("/v1/audit", params={"resource_name": "paired"}, headers=admin)).json()["items"]
    assert not [entry for entry in log if entry["action"] == "prompt.gate_override"]
    assert alike["pass_rate"] == pytest.approx(4 / 12, abs=1e-6)


async def grader(evals: AppClient, admin: Headers, name: str, score: int, reason: str = "graded") -> int:
    """A new version of the judge prompt ``name`` that grades every output ``score``."""
    return await publish(evals, admin, name, template=f'{{"score": {score}, "reason": "{reason}"}}')


async def test_no_regression_refuses_a_holders_run_graded_by_another_judge_version_and_says_so(
    evals: AppClient, admin: Headers
) -> None:
    lenient_judge = await grader(evals, admin, "paired-grader", 1)
    strict_judge = await grader(evals, admin, "paired-grader", 0)
    await dataset(evals, admin, "graded-cases", answers(*[("y", "y")] * 10))
    holder = await publish(evals, admin, "graded", template="{{ answer }}")
    candidate = await publish(evals, admin, "graded", template="{{ answer }} ")

    def judged(judge: int) -> list[dict[str, Any]]:
        return [{"kind": "judge", "prompt": "paired-grader", "version": judge}]

    base = await evaluate(evals, admin, "graded", holder, "graded-cases", scorers=judged(lenient_judge))
    assert (await promote(evals, admin, "graded", holder)).status_code == 200
    unpinned = [{"kind": "judge", "prompt": "paired-grader"}]  # any judge version, but the pair's must be one
    body = await gate(evals, admin, "graded", dataset={"name": "graded-cases"}, no_regression=True, scorers=unpinned)
    assert "version" not in body["scorers"][0]
    run = await evaluate(evals, admin, "graded", candidate, "graded-cases", scorers=judged(strict_judge))
    assert run["pass_rate"] == 0.0

    refused = await promote(evals, admin, "graded", candidate)

    assert refused.status_code == 422, refused.text
    (failure,) = problem(refused)["failures"]
    assert failure == (
        f"production version {holder} has no completed run on this dataset version to compare with scored alike: "
        f'run {base["id"]} was scored with judge(prompt="paired-grader", version={lenient_judge}), '
        f'run {run["id"]} with judge(prompt="paired-grader", version={strict_judge})'
    )
    await evaluate(evals, admin, "graded", holder, "graded-cases", scorers=judged(strict_judge))
    assert (await promote(evals, admin, "graded", candidate)).status_code == 200


async def test_a_gate_pinning_its_judge_takes_no_run_graded_by_another_version_of_it(
    evals: AppClient, admin: Headers
) -> None:
    old = await grader(evals, admin, "pin-grader", 1)
    await ok(
        await evals.post(
            f"/v1/prompts/pin-grader/versions/{old}/promote",
            json={"to": "production", "expected_current": None},
            headers=admin,
        )
    )
    new = await grader(evals, admin, "pin-grader", 1, "graded anew")
    await dataset(evals, admin, "pin-cases", answers(("y", "y")))
    version = await publish(evals, admin, "pinned")
    by_label = [{"kind": "judge", "prompt": "pin-grader", "label": "production"}]
    body = await gate(evals, admin, "pinned", dataset={"name": "pin-cases"}, min_pass_rate=0.5, scorers=by_label)
    assert (body["scorers"][0]["version"], "label" in body["scorers"][0]) == (old, False)  # pinned when set
    other = await evaluate(
        evals,
        admin,
        "pinned",
        version,
        "pin-cases",
        scorers=[{"kind": "judge", "prompt": "pin-grader", "version": new}],
    )

    refused = await promote(evals, admin, "pinned", version)

    assert refused.status_code == 422, refused.text
    assert f'run {other["id"]} was scored with judge(prompt="pin-grader", version={new})' in problem(refused)["detail"]
    await evaluate(evals, admin, "pinned", version, "pin-cases", scorers=by_label)  # the run pins production: old
    assert (await promote(evals, admin, "pinned", version)).status_code == 200


async def test_a_gate_set_without_scorers_takes_a_run_scored_any_way_as_gates_did_before(
    evals: AppClient, admin: Headers
) -> None:
    version = await publish(evals, admin, "unscored")
    await dataset(evals, admin, "unscored-cases", answers(("n", "y")))
    body = await gate(evals, admin, "unscored", dataset={"name": "unscored-cases"}, min_pass_rate=1.0)
    assert (body["scorers"], body["pass_rule"]) == (None, None)
    assert body["scoring"] == "any scoring (the gate names no scorers)"
    await evaluate(evals, admin, "unscored", version, "unscored-cases", scorers=LENIENT)

    assert (await promote(evals, admin, "unscored", version)).status_code == 200


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"scorers": [{"kind": "exact_match"}, {"kind": "sounds_right"}]}, "scorers[1].kind"),
        ({"scorers": [{"kind": "not_contains"}]}, "scorers[0].value"),
        ({"scorers": [{"kind": "length", "max": "long"}]}, "scorers[0].max"),
        ({"scorers": [{"kind": "exact_match", "strictly": True}]}, "scorers[0].strictly"),
        ({"scorers": [{"kind": "judge", "prompt": "no-such-grader"}]}, "scorers[0].prompt"),
        ({"scorers": [{"kind": "judge", "prompt": "bad-input", "version": 9}]}, "scorers[0].version"),
        ({"scorers": [{"kind": "judge", "prompt": "bad-input", "label": "canary"}]}, "scorers[0].label"),
        ({"scorers": EXACT, "pass_rule": {"min_passed": 2}}, "pass_rule.min_passed"),
        ({"pass_rule": {"all": True}}, "scorers"),
        ({"scorers": ["exact_match"]}, "scorers[0]"),
        ({"scorers": []}, "scorers"),
    ],
    ids=[
        "unknown-kind",
        "missing-field",
        "mistyped-field",
        "unknown-field",
        "unknown-judge",
        "unknown-judge-version",
        "unknown-label",
        "pass-rule-beyond-scorers",
        "pass-rule-without-scorers",
        "scorer-not-an-object",
        "no-scorers",
    ],
)
async def test_a_bad_scorer_is_a_422_naming_it_and_sets_no_gate(
    evals: AppClient, admin: Headers, fields: dict[str, Any], field: str
) -> None:
    await publish(evals, admin, "bad-input")
    await dataset(evals, admin, "bad-cases", answers(("y", "y")))
    response = await evals.put(
        "/v1/prompts/bad-input/gates/production", json={"dataset": {"name": "bad-cases"}, **fields}, headers=admin
    )

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [error["field"] for error in problem(response)["errors"]]
    assert (await evals.get("/v1/prompts/bad-input/gates/production", headers=admin)).status_code == 404
