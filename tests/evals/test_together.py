"""Evaluations with the rest of the completion path: a fallback config, a key's budget, a backend outage."""

from __future__ import annotations

from registry.auth.keys import Scope
from registry.runtime import Runtime
from tests.conftest import AppClient, KeyFactory
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run
from tests.evals.stand_in import StandIn
from tests.waiting import eventually_async


async def test_a_run_on_a_failing_config_uses_its_fallback_and_is_charged_to_its_key_within_budget(
    evals: AppClient, admin: dict[str, str], make_key: KeyFactory, stand_in: tuple[StandIn, str]
) -> None:
    await ok(await evals.post("/v1/configs", json={"name": "backup"}, headers=admin))
    await ok(
        await evals.post(
            "/v1/configs/backup/versions",
            json={"backend": "stand-in", "model": "echo", "params": {"temperature": 0}, "input_price_per_mtok": 1.0},
            headers=admin,
        )
    )
    version = await publish(evals, admin, "fallen", model="down", fallback={"name": "backup", "version": 1})
    await dataset(evals, admin, "fallen-cases", answers(*[(str(i), str(i)) for i in range(6)]))
    runner = await make_key(Scope.WRITE, name="evaluator")
    key_id = next(
        k["id"] for k in (await evals.get("/v1/keys/", headers=admin)).json()["items"] if k["name"] == "evaluator"
    )
    await ok(await evals.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": 20}, headers=admin))

    run = await start_run(
        evals, runner, prompt="fallen", version=version, dataset={"name": "fallen-cases"}, concurrency=1
    )
    done = await finished(evals, admin, run["id"])

    # 6 tokens an item: four items reach 24 of the 20 tokens, the fifth is refused, and the run says why.
    assert done["status"] == "failed"
    assert "over its budget" in done["error"]
    assert (done["items_done"], done["items_passed"], done["input_tokens"]) == (4, 4, 20)
    items = (await evals.get(f"/v1/evals/runs/{run['id']}/items", headers=admin)).json()["items"]
    assert all(item["fallback_used"] for item in items)
    assert done["cost"] == round(20 / 1_000_000, 9)
    budget = (await evals.get(f"/v1/keys/{key_id}/budget", headers=admin)).json()
    assert budget["used_tokens"] == 24
    assert len(stand_in[0].completions("down")) == 4  # each item tried its own config first


async def test_a_run_waits_out_a_backend_outage_and_then_finishes(
    evals: AppClient, admin: dict[str, str], stand_in: tuple[StandIn, str]
) -> None:
    runtime: Runtime = evals.app.state.runtime
    runtime.evals.outage_backoff = runtime.evals.outage_backoff * 0  # type: ignore[attr-defined]
    version = await publish(evals, admin, "outage", model="down-then-echo")
    await dataset(evals, admin, "outage-cases", answers(("a", "a"), ("b", "b")))
    run = await start_run(evals, admin, prompt="outage", version=version, dataset={"name": "outage-cases"})

    async def waiting() -> bool:
        body = (await evals.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()
        return body["status"] == "running" and (body["error"] or "").startswith("waiting for the backend")

    await eventually_async(waiting, "the run waiting for the backend")
    assert (await evals.get(f"/v1/evals/runs/{run['id']}", headers=admin)).json()["items_done"] == 0
    stand_in[0].up.set()
    done = await finished(evals, admin, run["id"])
    assert (done["status"], done["items_done"], done["items_passed"]) == ("completed", 2, 2)


async def test_a_run_near_its_keys_budget_waits_for_its_completions_in_flight_instead_of_failing(
    evals: AppClient, admin: dict[str, str], make_key: KeyFactory, stand_in: tuple[StandIn, str]
) -> None:
    """Each completion in flight holds its prompt's upper bound and its 64 max_tokens against the key's budget
    until recorded: with three held at the backend, the fourth item's completion is refused for them (not for
    what was spent), and the run waits for one to end instead of failing with most of its budget unspent."""
    version = await publish(evals, admin, "held")
    await dataset(evals, admin, "held-cases", answers(*[(f"hold-{i}", f"hold-{i}") for i in range(4)]))
    runner = await make_key(Scope.WRITE, name="held-evaluator")
    key_id = next(
        k["id"] for k in (await evals.get("/v1/keys/", headers=admin)).json()["items"] if k["name"] == "held-evaluator"
    )
    await ok(await evals.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": 200}, headers=admin))

    run = await start_run(evals, runner, prompt="held", version=version, dataset={"name": "held-cases"}, concurrency=4)
    await eventually_async(lambda: _asked(stand_in[0], 3), "three items held at the backend")
    stand_in[0].released.set()
    done = await finished(evals, admin, run["id"])

    assert (done["status"], done["items_done"], done["items_passed"]) == ("completed", 4, 4), done["error"]
    assert len(stand_in[0].completions("echo")) == 4
    budget = (await evals.get(f"/v1/keys/{key_id}/budget", headers=admin)).json()
    assert 0 < budget["used_tokens"] < 100


async def _asked(stand_in: StandIn, count: int) -> bool:
    return len(stand_in.completions("echo")) >= count
