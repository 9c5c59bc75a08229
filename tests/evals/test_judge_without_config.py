"""A judge prompt version that links no model config cannot judge: a run naming it without a config of its own is
refused when it is created, naming the field, instead of completing with every item failed by the judge."""

from __future__ import annotations

from tests.conftest import AppClient
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run

VERDICT = '{"score": 1, "reason": "fine"}'


async def unlinked_judge(client: AppClient, admin: dict[str, str]) -> int:
    """A judge prompt whose only version links no config; returns that version."""
    await ok(await client.post("/v1/prompts", json={"name": "unlinked-judge"}, headers=admin))
    body = {"kind": "chat", "messages": [{"role": "user", "content": VERDICT}]}
    created = await ok(await client.post("/v1/prompts/unlinked-judge/versions", json=body, headers=admin))
    number: int = created["version"]
    return number


async def test_a_judge_that_links_no_config_is_refused_naming_its_config(
    evals: AppClient, admin: dict[str, str]
) -> None:
    version = await publish(evals, admin, "candidate")
    await dataset(evals, admin, "candidate-cases", answers(("a", "a")))
    judge = await unlinked_judge(evals, admin)
    body = {
        "prompt": "candidate",
        "version": version,
        "dataset": {"name": "candidate-cases"},
        "scorers": [{"kind": "exact_match"}, {"kind": "judge", "prompt": "unlinked-judge", "version": judge}],
    }

    response = await evals.post("/v1/evals/runs", json=body, headers=admin)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [error["field"] for error in response.json()["errors"]] == ["scorers[1].config"]
    assert (await ok(await evals.get("/v1/evals/runs", headers=admin)))["items"] == []


async def test_a_judge_that_links_no_config_judges_with_the_config_the_run_names_for_it(
    evals: AppClient, admin: dict[str, str]
) -> None:
    version = await publish(evals, admin, "candidate")  # its config, candidate-config, judges too
    await dataset(evals, admin, "candidate-cases", answers(("a", "a")))
    judge = await unlinked_judge(evals, admin)
    scorers = [{"kind": "judge", "prompt": "unlinked-judge", "version": judge, "config": "candidate-config"}]

    run = await start_run(
        evals, admin, prompt="candidate", version=version, dataset={"name": "candidate-cases"}, scorers=scorers
    )
    done = await finished(evals, admin, run["id"])

    assert (done["status"], done["items_done"], done["items_passed"]) == ("completed", 1, 1)
