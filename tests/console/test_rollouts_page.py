"""A prompt's rollouts in the console: each with its candidate, status, progress per step and reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from registry.console import formatting
from registry.console.rollouts import checks_of, guardrail_chart
from registry.rollouts.schemas import RolloutEventOut, RolloutOut
from tests.console.conftest import HOSTILE_KEY_NAME, Console, LiveRegistry, check_page
from tests.console.seed import prompt_with_versions, unique

HELD = 1_000_000  # more units than a test sends: the checker holds the step until a person moves it


async def test_the_prompt_page_shows_each_rollout_with_its_steps_and_reason(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        name = await prompt_with_versions(api, "support/rollout", 2)
        metric = unique("errors")
        assert (
            await api.post("/v1/metrics", json={"key": metric, "kind": "binomial", "direction": "lower"})
        ).status_code == 201
        body = {
            "candidate_version": 2,
            # The live registry's worker checks rollouts: steps it can never call done keep the page still.
            "steps": [{"share": 0.05, "min_units": HELD}, {"share": 0.5, "min_units": HELD}, {"share": 1.0}],
            "guardrails": [{"metric": metric, "tolerance": 0.02, "relative": False}],
        }
        path = f"/v1/prompts/{quote(name, safe='')}/rollouts"
        first = (await api.post(path, json=body)).json()
        assert (await api.post(f"/v1/rollouts/{first['id']}/advance")).status_code == 200
        aborted = await api.post(f"/v1/rollouts/{first['id']}/abort", json={"reason": "support saw longer answers"})
        assert aborted.status_code == 200
        second = (await api.post(path, json=body)).json()
    page = await console.signed_in("alice")
    await page.goto(f"/console/prompts/{quote(name, safe='')}")
    rows = [" ".join(text.split()) for text in await page.locator("#rollouts tbody tr").all_inner_texts()]
    assert len(rows) == 2
    assert rows[0].startswith(f"#{second['id']}")
    assert "v2 against v1" in rows[0]
    assert "running" in rows[0]
    assert "5.00% now 50.00% 100.00%" in rows[0]
    assert rows[1].startswith(f"#{first['id']}")
    assert "aborted" in rows[1]
    assert "5.00% done 50.00% ended here 100.00%" in rows[1]
    assert rows[1].endswith("support saw longer answers")
    await check_page(page, "prompt-rollouts")

    # The running rollout holds production: the page offers no move of it, and says why.
    promote_v2 = page.get_by_role("link", name="Promote v2 to production")
    assert "holds production" in await page.locator("#rollout-holds-production").inner_text()
    assert await promote_v2.count() == 0
    assert await page.get_by_role("link", name="Promote v2 to staging").count() == 1
    async with live.api() as api:
        ended = await api.post(f"/v1/rollouts/{second['id']}/abort", json={"reason": "done looking"})
        assert ended.status_code == 200
    await page.reload()
    assert await page.locator("#rollout-holds-production").count() == 0
    assert await promote_v2.count() == 1


REASON = "<img src=x onerror=alert('reason')> answers got longer"


async def test_the_rollout_page_shows_its_steps_guardrails_and_history(console: Console, live: LiveRegistry) -> None:
    async with live.api() as api, live.api("hostile") as hostile:
        name = await prompt_with_versions(api, "support/rollout-page", 2)
        metric = unique("errors")
        assert (
            await api.post("/v1/metrics", json={"key": metric, "kind": "binomial", "direction": "lower"})
        ).status_code == 201
        body = {
            "candidate_version": 2,
            "steps": [{"share": 0.1, "min_units": 200}, {"share": 0.5, "min_units": HELD}, {"share": 1.0}],
            "guardrails": [{"metric": metric, "tolerance": 0.05, "relative": True}],
        }
        created = await hostile.post(f"/v1/prompts/{quote(name, safe='')}/rollouts", json=body)
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        assert (await hostile.post(f"/v1/rollouts/{rollout_id}/advance")).status_code == 200
        assert (await hostile.post(f"/v1/rollouts/{rollout_id}/abort", json={"reason": REASON})).status_code == 200
        shown = (await api.get(f"/v1/rollouts/{rollout_id}")).json()
    page = await console.signed_in("alice")
    await page.goto(f"/console/prompts/{quote(name, safe='')}")
    await page.get_by_role("link", name=f"#{rollout_id}").click()
    await page.wait_for_url(f"**/console/rollouts/{rollout_id}")

    assert await page.locator("script").count() == 0
    assert await page.locator("[onerror]").count() == 0
    assert " ".join((await page.locator("h1").inner_text()).split()) == f"Rollout {rollout_id} aborted"
    assert await page.locator("#rollout-reason").inner_text() == shown["reason"] == REASON
    candidate = await page.locator("#rollout-candidate").inner_text()
    assert candidate == f"v{shown['candidate_version']} against production v{shown['production_version']}"
    assert name in await page.locator(".crumbs").inner_text()
    steps = [" ".join(t.split()) for t in await page.locator("#rollout-steps tbody tr").all_inner_texts()]
    assert steps == [
        f"{i + 1} {formatting.percent(s['share'])} {formatting.number(s['min_seconds'])} "
        f"{formatting.count(s['min_units'])} {progress}"
        for i, (s, progress) in enumerate(zip(shown["steps"], ["done", "ended here", "—"], strict=True))
    ]
    guardrails = " ".join((await page.locator("#rollout-guardrails tbody tr").inner_text()).split())
    assert guardrails == f"{metric} lower {formatting.percent(0.05)} — — not checked yet"
    events = [" ".join(t.split()) for t in await page.locator("#rollout-events tbody tr").all_inner_texts()]
    assert [e["action"] for e in shown["events"]] == ["started", "advanced", "aborted"]
    assert len(events) == 3
    for row, event in zip(events, shown["events"], strict=True):
        assert f"{event['action']} {event['step'] + 1} {HOSTILE_KEY_NAME}" in row
    assert events[2].endswith(REASON)
    await check_page(page, "rollout")

    missing = await page.goto("/console/rollouts/2147483000")
    assert missing is not None
    assert missing.status == 404
    assert "no rollout has id 2147483000" in await page.locator("main").inner_text()


def _evidence(at: str, share: float, estimate: float, bound: float, failed: bool) -> dict[str, Any]:
    return {
        "checked_at": at,
        "step": 0,
        "share": share,
        "units": {"production": 900, "candidate": 100},
        "srm_p_value": 0.5,
        "srm_failed": False,
        "guardrails": [
            {"metric": "errors", "estimate": estimate, "worst_bound": bound, "failed": failed, "note": None}
        ],
        "action": "rollback" if failed else "advance",
        "reasons": [],
    }


def test_each_check_is_plotted_once_with_its_worst_bound_and_the_tolerance() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    advanced = _evidence("2026-01-01T00:00:00", 0.1, 0.01, -0.02, False)
    failed = _evidence("2026-01-01T01:00:00", 0.5, 0.09, 0.07, True)
    events = [
        RolloutEventOut(at=now, action="started", step=0, actor="a", detail={"reason": None}),
        RolloutEventOut(at=now, action="advanced", step=1, actor="a", detail={"evidence": advanced}),
        RolloutEventOut(at=now, action="rolled_back", step=1, actor="a", detail={"evidence": failed}),
    ]
    rollout = RolloutOut(
        id=1, prompt="p", experiment="e", status="rolled_back", step=1, share=0.5, candidate_version=2,
        production_version=1, config=None, config_version=None, steps=[], guardrails=[], alpha=0.05,
        step_started_at=now, reason="r", evidence=failed, created_at=now, created_by="a", updated_at=now,
        ended_at=now, events=events,
    )  # fmt: skip
    checks = checks_of(rollout)
    assert checks == [advanced, failed]  # the latest check is the rollback's: shown once
    guardrail = {"metric": "errors", "direction": "lower", "tolerance": 0.05, "relative": True}
    chart = str(guardrail_chart(guardrail, checks, "g"))
    assert '<title id="g-title">Relative effect on errors' in chart
    assert "check 1 · 10%: +1.00%, worst bound -2.00%" in chart
    assert "check 2 · 50%: +9.00%, worst bound +7.00% (failed)" in chart
    assert '<g class="chart-reference"><title>tolerated worse: +5.00%</title>' in chart
    assert chart.count("<circle") == 2  # one per check; the tolerance is a line
    assert guardrail_chart(guardrail, [], "g") is None
