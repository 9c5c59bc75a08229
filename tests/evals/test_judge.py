"""A judge is a prompt of the registry: it answers a structured score and reason, recorded with its versions."""

from __future__ import annotations

from tests.conftest import AppClient
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run
from tests.evals.stand_in import StandIn

# The stand-in answers what the prompt says, so this judge grades like a model that compares exactly.
JUDGE = (
    '{"score": {% if output == expected %}1{% else %}0.25{% endif %}, '
    '"reason": "{% if output == expected %}matches{% else %}differs from {{ expected }}{% endif %}"}'
)


async def test_a_judge_prompt_scores_each_output_with_structured_output_and_is_recorded(
    evals: AppClient, admin: dict[str, str], stand_in: tuple[StandIn, str]
) -> None:
    judge_version = await publish(evals, admin, "grader", template=JUDGE)
    await ok(
        await evals.post(
            f"/v1/prompts/grader/versions/{judge_version}/promote",
            json={"to": "production", "expected_current": None},
            headers=admin,
        )
    )
    version = await publish(evals, admin, "judged")
    await dataset(evals, admin, "judged-cases", answers(("a", "a"), ("b", "c")))
    scorers = [{"kind": "judge", "prompt": "grader", "min_score": 0.5, "weight": 2}, {"kind": "contains", "value": "a"}]
    run = await start_run(
        evals,
        admin,
        prompt="judged",
        version=version,
        dataset={"name": "judged-cases"},
        scorers=scorers,
        pass_rule={"min_score": 0.5},
    )
    done = await finished(evals, admin, run["id"])
    assert (done["status"], done["items_passed"]) == ("completed", 1)
    items = (await evals.get(f"/v1/evals/runs/{run['id']}/items", headers=admin)).json()["items"]
    judged = [item["scores"][0] for item in items]
    assert [(s["value"], s["passed"], s["reason"]) for s in judged] == [
        (1.0, True, "matches"),
        (0.25, False, "differs from c"),
    ]
    assert judged[0]["judge"] == {"prompt": "grader", "version": 1, "config": "grader-config", "config_version": 1}
    assert items[0]["score"] == 1.0  # weighted: (2 * 1 + 1 * 1) / 3
    assert abs(items[1]["score"] - 0.5 / 3) < 1e-9  # (2 * 0.25 + 1 * 0) / 3
    asked = [r for r in stand_in[0].completions() if r["messages"][-1]["content"].startswith('{"score"')]
    assert len(asked) == 2
    assert asked[0]["response_format"]["type"] == "json_schema"
    assert asked[0]["response_format"]["json_schema"]["schema"]["required"] == ["score", "reason"]
    # The judge's completions are charged with the run's: tokens of both.
    assert done["input_tokens"] == 4 * 5


async def test_a_judge_that_does_not_answer_a_score_leaves_the_item_without_a_verdict_and_says_why(
    evals: AppClient, admin: dict[str, str]
) -> None:
    await publish(evals, admin, "rambler", template="I think {{ output }} is fine")
    await ok(
        await evals.post(
            "/v1/prompts/rambler/versions/1/promote", json={"to": "production", "expected_current": None}, headers=admin
        )
    )
    version = await publish(evals, admin, "rambled")
    await dataset(evals, admin, "rambled-cases", answers(("a", "a")))
    run = await start_run(
        evals,
        admin,
        prompt="rambled",
        version=version,
        dataset={"name": "rambled-cases"},
        scorers=[{"kind": "judge", "prompt": "rambler"}],
    )
    done = await finished(evals, admin, run["id"])
    assert (done["items_passed"], done["items_scorer_errors"], done["pass_rate"]) == (0, 1, None)
    item = (await evals.get(f"/v1/evals/runs/{run['id']}/items", headers=admin)).json()["items"][0]
    assert (item["status"], item["passed"]) == ("scorer_error", False)
    assert "not a score and reason" in item["scores"][0]["reason"]
