"""Lists read page by page while the things listed keep coming: a prompt's rollouts."""

from __future__ import annotations

from tests.conftest import AppClient
from tests.experiments.conftest import make_metric, make_prompt, settle
from tests.rollouts.conftest import settings as settings  # no background flushes or checks
from tests.seams.conftest import ok

Headers = dict[str, str]


async def rollout_then_abort(client: AppClient, admin: Headers) -> int:
    body = {"candidate_version": 2, "steps": [{"share": 0.5}, {"share": 1.0}], "guardrails": [{"metric": "converted"}]}
    rollout = await ok(await client.post("/v1/prompts/dec6-pages/rollouts", json=body, headers=admin))
    await settle(client)
    await ok(await client.post(f"/v1/rollouts/{rollout['id']}/abort", json={"reason": "next"}, headers=admin))
    return int(rollout["id"])


async def test_a_prompts_rollouts_are_listed_page_by_page_while_new_ones_start(
    client: AppClient, admin: Headers
) -> None:
    """The list had no cursor: past its ``limit`` (at most 100) a prompt's older rollouts could not be listed."""
    await make_prompt(client, admin, "dec6-pages")
    await make_metric(client, admin, "converted")
    first = [await rollout_then_abort(client, admin) for _ in range(3)]

    page = await ok(await client.get("/v1/prompts/dec6-pages/rollouts?limit=2", headers=admin))
    assert [r["id"] for r in page["items"]] == first[:0:-1]
    newer = await rollout_then_abort(client, admin)  # started between the pages: on no later page
    rest = await ok(
        await client.get(f"/v1/prompts/dec6-pages/rollouts?limit=2&cursor={page['next_cursor']}", headers=admin)
    )
    assert ([r["id"] for r in rest["items"]], rest["next_cursor"]) == ([first[0]], None)
    again = await ok(await client.get("/v1/prompts/dec6-pages/rollouts?limit=2", headers=admin))
    assert [r["id"] for r in again["items"]] == [newer, first[2]]
