"""A prompt's rollouts in the console: each with its candidate, status, progress per step and reason."""

from __future__ import annotations

from urllib.parse import quote

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import prompt_with_versions, unique


async def test_the_prompt_page_shows_each_rollout_with_its_steps_and_reason(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        name = await prompt_with_versions(api, "support/rollout", 2)
        metric = unique("errors")
        assert (await api.post("/v1/metrics", json={"key": metric, "kind": "binomial"})).status_code == 201
        body = {
            "candidate_version": 2,
            "steps": [{"share": 0.05}, {"share": 0.5}, {"share": 1.0}],
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
