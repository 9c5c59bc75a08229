"""A run whose completions pass a model-graded guard: what the guard's classifier spent is in the run's cost.

The classifier runs on a completion service of its own inside each of the run's completions and is charged to
the run's key; the run's cost (and each item's) counts it, so the run's cost is what the key was charged.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.runtime import Runtime
from tests.conftest import AppClient
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run

PRICES = (100_000.0, 1_000_000.0)  # per million tokens: 0.1 an input token, 1 an output token
CLASSIFIER_PRICES = (300_000.0, 1_000_000.0)  # 0.3 an input token, 1 an output token
# The stand-in answers the rendered template: the classifier's template is its verdict (6 words: 6 tokens).
CLEAN = '{"flagged": false, "category": "none", "reason": "fine"}'


def cost_of(prices: tuple[float, float], input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1e6


async def records(client: AppClient, engine: AsyncEngine) -> list[dict[str, Any]]:
    runtime: Runtime = client.app.state.runtime
    await runtime.completions.recorder.flush()
    query = text("SELECT prompt, status, input_tokens, output_tokens, cost, api_key_id FROM completions ORDER BY id")
    async with engine.connect() as connection:
        return [dict(row._mapping) for row in (await connection.execute(query)).all()]


async def test_a_model_guards_classifier_spend_is_in_the_runs_cost_and_equals_what_the_key_was_charged(
    evals: AppClient, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    classifier = await publish(evals, admin, "moderator", template=CLEAN, prices=CLASSIFIER_PRICES)
    guard = {"name": "moderation", "kind": "model", "prompt": "moderator", "version": classifier, "on": "both"}
    version = await publish(evals, admin, "guarded", prices=PRICES, guards=[guard])
    await dataset(evals, admin, "guarded-cases", answers(("a", "a"), ("b c", "b c")))

    run = await start_run(evals, admin, prompt="guarded", version=version, dataset={"name": "guarded-cases"})
    done = await finished(evals, admin, run["id"])

    assert (done["status"], done["items_passed"]) == ("completed", 2)
    recorded = await records(evals, clean_database)
    by_prompt = [(r["prompt"], r["status"]) for r in recorded]
    assert sorted(by_prompt) == [("guarded", "ok")] * 2 + [("moderator", "ok")] * 4  # input and output, per item
    classifier_cost = cost_of(CLASSIFIER_PRICES, 5, 6)
    items = (await ok(await evals.get(f"/v1/evals/runs/{run['id']}/items", headers=admin)))["items"]
    assert [item["cost"] for item in items] == [
        pytest.approx(cost_of(PRICES, 5, 1) + 2 * classifier_cost),
        pytest.approx(cost_of(PRICES, 5, 2) + 2 * classifier_cost),
    ]
    assert done["cost"] == pytest.approx(sum(float(r["cost"]) for r in recorded))
    assert (done["input_tokens"], done["output_tokens"]) == (6 * 5, 1 + 2 + 4 * 6)
    assert done["discarded"]["cost"] == 0.0
    key = recorded[0]["api_key_id"]
    tokens, cost = await evals.app.state.runtime.completions.budgets.spend(key)
    assert (tokens, cost) == (done["input_tokens"] + done["output_tokens"], pytest.approx(done["cost"]))
