"""A comparison with a run that did not complete (cancelled halfway) says which, instead of reading as one of the
whole dataset version: only the items such a run stored are paired."""

from __future__ import annotations

import uuid

from tests.conftest import AppClient
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run
from tests.evals.stand_in import StandIn
from tests.waiting import eventually_async


async def test_a_comparison_names_the_runs_that_did_not_complete(
    evals: AppClient, admin: dict[str, str], stand_in: tuple[StandIn, str]
) -> None:
    server, _ = stand_in
    name = f"halfway-{uuid.uuid4().hex[:6]}"
    version = await publish(evals, admin, name)
    await dataset(evals, admin, f"{name}-cases", answers(("a", "a"), ("hold it", "hold it")))
    base = {"prompt": name, "version": version, "dataset": {"name": f"{name}-cases"}, "concurrency": 1}
    server.released.set()
    whole = await finished(evals, admin, (await start_run(evals, admin, **base))["id"])
    assert whole["status"] == "completed"
    server.released.clear()
    halfway = await start_run(evals, admin, **base)
    try:

        async def one_done() -> bool:
            return (await evals.get(f"/v1/evals/runs/{halfway['id']}", headers=admin)).json()["items_done"] == 1

        await eventually_async(one_done, "the first item stored")
        await ok(await evals.post(f"/v1/evals/runs/{halfway['id']}/cancel", headers=admin))
    finally:
        server.released.set()
    compared = await ok(
        await evals.get("/v1/evals/compare", params={"base": whole["id"], "candidate": halfway["id"]}, headers=admin)
    )
    assert compared["paired_items"] == 1
    assert compared["comparison"]["incomplete_runs"] == [halfway["id"]]
    again = await ok(
        await evals.get("/v1/evals/compare", params={"base": whole["id"], "candidate": whole["id"]}, headers=admin)
    )
    assert again["comparison"]["incomplete_runs"] == []
