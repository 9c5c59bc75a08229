"""A run some of whose items its config's fallback answered is no evidence for a gate: those answers are another
model's, and its pass rate (or its pairing with the holder's run) measures a mix of the two."""

from __future__ import annotations

from tests.conftest import AppClient, problem
from tests.evals.conftest import answers, dataset, ok, publish
from tests.evals.test_gates import evaluate, gate, promote


async def fallback_config(client: AppClient, admin: dict[str, str]) -> None:
    await ok(await client.post("/v1/configs", json={"name": "spare"}, headers=admin))
    await ok(
        await client.post(
            "/v1/configs/spare/versions",
            json={"backend": "stand-in", "model": "echo", "params": {"temperature": 0}},
            headers=admin,
        )
    )


async def test_a_run_answered_by_the_fallback_does_not_meet_a_gate_its_pass_rate_would(
    evals: AppClient, admin: dict[str, str]
) -> None:
    await fallback_config(evals, admin)
    version = await publish(evals, admin, "rescued", model="down", fallback={"name": "spare", "version": 1})
    await dataset(evals, admin, "rescued-cases", answers(*[(str(i), str(i)) for i in range(4)]))
    await gate(evals, admin, "rescued", dataset={"name": "rescued-cases"}, min_pass_rate=0.5)
    run = await evaluate(evals, admin, "rescued", version, "rescued-cases")
    assert (run["status"], run["pass_rate"]) == ("completed", 1.0)  # every item passed, on the fallback's model

    refused = await promote(evals, admin, "rescued", version)
    assert refused.status_code == 422, refused.text
    details = problem(refused)
    assert details["type"] == "/problems/gate_failed"
    assert details["failures"] == [
        f"run {run['id']}: 4 of 4 items were answered by the fallback of config rescued-config@1, which is no "
        "evidence of that config; run it again once its backend answers"
    ]
    assert details["evidence"]["fallback_answers"] == {f"run {run['id']}": 4}

    overridden = await promote(
        evals, admin, "rescued", version, reason="retiring its backend", override_gate="the backend is retired"
    )
    assert overridden.status_code == 200, overridden.text


async def test_a_holders_run_answered_by_the_fallback_is_no_baseline_for_no_regression(
    evals: AppClient, admin: dict[str, str]
) -> None:
    await fallback_config(evals, admin)
    holder = await publish(evals, admin, "paired", model="down", fallback={"name": "spare", "version": 1})
    assert (await promote(evals, admin, "paired", holder)).status_code == 200
    await dataset(evals, admin, "paired-cases", answers(*[(str(i), str(i)) for i in range(3)]))
    baseline = await evaluate(evals, admin, "paired", holder, "paired-cases")
    candidate = await publish(evals, admin, "paired", template="{{ answer }} ", config="paired-echo")
    run = await evaluate(evals, admin, "paired", candidate, "paired-cases")
    await gate(evals, admin, "paired", dataset={"name": "paired-cases"}, no_regression=True)

    details = problem(await promote(evals, admin, "paired", candidate))
    assert details["type"] == "/problems/gate_failed"
    assert details["failures"] == [
        f"run {baseline['id']}: 3 of 3 items were answered by the fallback of config paired-config@1, which is no "
        "evidence of that config; run it again once its backend answers"
    ]
    assert details["evidence"]["run_id"] == run["id"]
