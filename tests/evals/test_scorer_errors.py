"""A judge that fails for its own reasons (its backend refuses its request, it answers no verdict) says nothing of
the output it was asked about: the item's outcome is ``scorer_error``, neither passed nor failed, the run counts
them, pass rates leave them out, and a gate is not met on a run that has them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import click
from click.testing import CliRunner

from registry.cli.eval_commands import print_run, progress_line, verdict
from registry.console.controller import console_template_config
from registry.console.evals import listed, scorer_rates
from registry.evals.models import EvalRun
from registry.evals.schemas import RunItemOut
from tests.conftest import AppClient, problem
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run
from tests.evals.test_gates import gate, promote

VERDICT = '{"score": 1, "reason": "fine"}'


async def judge(client: AppClient, admin: dict[str, str], name: str, *, template: str, model: str = "echo") -> int:
    return await publish(client, admin, name, template=template, model=model)


async def test_a_judge_whose_backend_refuses_structured_output_leaves_items_unjudged_and_the_gate_unmet(
    evals: AppClient, admin: dict[str, str]
) -> None:
    grader = await judge(evals, admin, "plain-grader", template=VERDICT, model="unstructured")
    version = await publish(evals, admin, "graded")
    await dataset(evals, admin, "graded-cases", answers(("a", "a"), ("b", "b"), ("c", "c")))
    # Exact match and the judge weigh alike: a broken judge's 0 beside a match still reached min_score 0.5 and
    # passed the item, so the gate was met on the judge's breakage.
    await gate(
        evals,
        admin,
        "graded",
        dataset={"name": "graded-cases"},
        min_pass_rate=0.9,
        scorers=[{"kind": "exact_match"}, {"kind": "judge", "prompt": "plain-grader", "version": grader}],
        pass_rule={"min_score": 0.5},
    )
    run = await start_run(
        evals,
        admin,
        prompt="graded",
        version=version,
        dataset={"name": "graded-cases"},
        scorers=[{"kind": "exact_match"}, {"kind": "judge", "prompt": "plain-grader", "version": grader}],
        pass_rule={"min_score": 0.5},
    )
    done = await finished(evals, admin, run["id"])

    assert (done["status"], done["items_done"], done["items_passed"]) == ("completed", 3, 0)
    assert (done["items_scorer_errors"], done["items_errored"], done["pass_rate"]) == (3, 0, None)
    items = (await ok(await evals.get(f"/v1/evals/runs/{run['id']}/items", headers=admin)))["items"]
    assert [(item["status"], item["passed"], item["score"]) for item in items] == [("scorer_error", False, None)] * 3
    assert items[0]["output"] == "a"
    assert "response_format is not supported" in items[0]["error"]
    assert items[0]["scores"][1]["error"].startswith("the judge failed: upstream_bad_request")
    assert done["pass_rate_interval"] is None  # no item has a verdict

    refused = await promote(evals, admin, "graded", version)
    assert refused.status_code == 422, refused.text
    details = problem(refused)
    assert details["type"] == "/problems/gate_failed"
    assert (
        f"run {run['id']}: a scorer failed on 3 of 3 items (status scorer_error), so they have no verdict; "
        "fix the scorer and run it again"
    ) in details["failures"]
    assert details["evidence"]["scorer_errors"] == {f"run {run['id']}": 3}


async def test_an_answer_that_is_no_verdict_is_a_scorer_error_left_out_of_the_pass_rate(
    evals: AppClient, admin: dict[str, str]
) -> None:
    # The judge answers garbage for one output and a verdict for the others.
    template = '{% if output == "b" %}I think it is fine{% else %}' + VERDICT + "{% endif %}"
    grader = await judge(evals, admin, "moody-grader", template=template)
    version = await publish(evals, admin, "moody")
    await dataset(evals, admin, "moody-cases", answers(("a", "a"), ("b", "b"), ("c", "x")))
    scorers: list[dict[str, Any]] = [
        {"kind": "exact_match"},
        {"kind": "judge", "prompt": "moody-grader", "version": grader},
    ]
    run = await start_run(
        evals, admin, prompt="moody", version=version, dataset={"name": "moody-cases"}, scorers=scorers
    )
    done = await finished(evals, admin, run["id"])

    assert (done["items_done"], done["items_passed"], done["items_scorer_errors"]) == (3, 1, 1)
    assert done["pass_rate"] == 0.5  # "a" passed, "c" failed; "b" has no verdict
    items = (await ok(await evals.get(f"/v1/evals/runs/{run['id']}/items", headers=admin)))["items"]
    assert [item["status"] for item in items] == ["scored", "scorer_error", "scored"]
    assert "not a score and reason" in items[1]["error"]
    assert done["pass_rate_interval"]["estimate"] == 0.5


RUN_FIELDS: dict[str, Any] = {
    "id": 7, "status": "completed", "prompt": "p", "prompt_version": 1, "config": "c", "config_version": 1,
    "dataset": "d", "dataset_version": 1, "scorers": [], "pass_rule": None, "concurrency": 4, "total_items": 4,
    "items_done": 4, "items_passed": 1, "items_invalid": 0, "items_errored": 0, "items_scorer_errors": 2,
    "cost": 0.0, "input_tokens": 0, "output_tokens": 0, "created_by": "a", "created_at": None, "started_at": None,
    "finished_at": None, "error": None,
}  # fmt: skip


def unjudged_item(position: int) -> RunItemOut:
    scores = [
        {"name": "judge", "kind": "judge", "value": 0.0, "passed": False, "reason": "x", "error": "the judge failed"}
    ]
    return RunItemOut(
        position=position, status="scorer_error", output="out", scores=scores, score=None, passed=False,
        error="judge: the judge failed", latency_ms=None, input_tokens=0, output_tokens=0, cost=0.0, cached=False,
        fallback_used=False,
    )  # fmt: skip


def test_the_console_leaves_scorer_errors_out_of_a_runs_pass_rate_and_shows_them_apart() -> None:
    run = cast(EvalRun, SimpleNamespace(**RUN_FIELDS))
    row = listed(run)
    assert row.pass_rate_interval is not None
    assert (row.pass_rate, row.pass_rate_interval.estimate, row.items_scorer_errors) == (0.5, 0.5, 2)
    judged = [{"name": "judge", "kind": "judge", "passed": True}]
    unjudged = [{"name": "judge", "kind": "judge", "passed": False, "error": "the judge failed"}]
    rates = scorer_rates([{"kind": "judge", "name": "judge"}], [judged, unjudged])
    assert [(r.passed, r.scored) for r in rates] == [(1, 1)]

    environment = console_template_config().instance.engine  # type: ignore[union-attr]
    parts = environment.get_template("eval-run-parts.html").module
    view = SimpleNamespace(run=row, items=[unjudged_item(3)], failed=False, next_cursor=None, scorers=rates)
    summary = str(parts.run_summary(view))  # type: ignore[attr-defined]
    assert "2 without a verdict (a scorer failed), not counted" in summary
    assert "Scorer errors</dt><dd>2<" in str(parts.run_details(view))  # type: ignore[attr-defined]
    shown = str(parts.run_items(view))  # type: ignore[attr-defined]
    assert '<span class="badge">no verdict</span>' in shown
    assert "badge-fail" not in shown


def test_the_cli_shows_scorer_errors_and_does_not_meet_a_minimum_pass_rate_with_them() -> None:
    run = {**RUN_FIELDS, "version": 1, "pass_rate": 0.5, "pass_rate_interval": None, "mean_score_interval": None}
    assert verdict(run, 0.5) == (
        "run 7: a scorer failed on 2 of 4 items, which have no verdict, so --min-pass-rate 50.0% cannot be met"
    )
    assert verdict({**run, "items_scorer_errors": 0, "items_passed": 2, "pass_rate": 0.5}, 0.5) is None

    @click.command()
    def show() -> None:
        print_run(run)

    shown = CliRunner().invoke(show).output
    assert "items: 4 of 4 done, 1 passed, 0 invalid, 0 errored, 2 scorer errors (no verdict)\n" in shown
    assert "pass rate of the items with a verdict: 50.0%\n" in shown
    assert progress_line({**run, "items_done": 4}, bar=False) == (
        "run 7: completed, 4/4 items, pass rate 50.0%, cost 0, 2 scorer errors"
    )
