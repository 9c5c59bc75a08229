"""Evaluation runs through the worker: scripted answers give known pass rates; results, items, progress."""

from __future__ import annotations

import json
import uuid
from typing import Any

from scipy import stats
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope
from registry.settings import Settings
from tests.completions.conftest import backend
from tests.conftest import AppClient, KeyFactory, problem, serve_in_process
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run
from tests.evals.stand_in import StandIn


async def test_a_run_scores_every_item_and_reports_pass_rate_with_its_interval(
    evals: AppClient, admin: dict[str, str], stand_in: tuple[StandIn, str]
) -> None:
    version = await publish(evals, admin, "qa")
    items = answers(*[("yes", "yes")] * 7, *[("no", "yes")] * 3)
    await dataset(evals, admin, "qa-cases", items)
    run = await start_run(evals, admin, prompt="qa", version=version, dataset={"name": "qa-cases"})
    assert (run["status"], run["total_items"], run["dataset_version"]) == ("queued", 10, 1)
    done = await finished(evals, admin, run["id"])
    assert done["status"] == "completed", done
    assert (done["items_done"], done["items_passed"], done["pass_rate"]) == (10, 7, 0.7)
    low, high = stats.binomtest(7, 10).proportion_ci(confidence_level=0.95, method="wilson")
    interval = done["pass_rate_interval"]
    assert interval["estimate"] == 0.7
    assert (round(interval["low"], 9), round(interval["high"], 9)) == (round(low, 9), round(high, 9))
    assert done["input_tokens"] == 50
    assert done["output_tokens"] == 10
    assert len(stand_in[0].completions("echo")) == 10
    page = (await evals.get(f"/v1/evals/runs/{run['id']}/items", params={"failed": "true"}, headers=admin)).json()
    assert [i["position"] for i in page["items"]] == [8, 9, 10]
    first = page["items"][0]
    assert first["output"] == "no"
    assert first["passed"] is False
    assert first["scores"][0]["kind"] == "exact_match"
    assert "expected 'yes'" in first["scores"][0]["reason"]
    assert first["latency_ms"] is not None
    assert (first["input_tokens"], first["output_tokens"]) == (5, 1)


async def test_items_whose_variables_do_not_fit_the_input_schema_are_reported_not_skipped(
    evals: AppClient, admin: dict[str, str], stand_in: tuple[StandIn, str]
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    version = await publish(evals, admin, "typed", input_schema=schema)
    items = [*answers(("a", "a"), ("b", "b")), {"variables": {"answer": 3}, "expected": "3"}, {"variables": {}}]
    await dataset(evals, admin, "typed-cases", items)
    run = await start_run(evals, admin, prompt="typed", version=version, dataset={"name": "typed-cases"})
    done = await finished(evals, admin, run["id"])
    assert (done["status"], done["items_done"], done["items_invalid"], done["items_passed"]) == ("completed", 4, 2, 2)
    invalid = (await evals.get(f"/v1/evals/runs/{run['id']}/items", params={"failed": "true"}, headers=admin)).json()
    assert [(i["position"], i["status"]) for i in invalid["items"]] == [(3, "invalid"), (4, "invalid")]
    assert "answer" in invalid["items"][1]["error"]
    assert len(stand_in[0].completions("echo")) == 2  # the invalid items never reached the backend


async def test_a_run_may_use_another_version_of_its_config(
    evals: AppClient, admin: dict[str, str], stand_in: tuple[StandIn, str]
) -> None:
    version = await publish(evals, admin, "cfg", model="echo")
    await ok(
        await evals.post(
            "/v1/configs/cfg-config/versions",
            json={"backend": "stand-in", "model": "down", "params": {"temperature": 0}},
            headers=admin,
        )
    )
    await dataset(evals, admin, "cfg-cases", answers(("x", "x")))
    run = await start_run(
        evals, admin, prompt="cfg", version=version, config_version=1, dataset={"name": "cfg-cases", "version": 1}
    )
    assert (run["config"], run["config_version"]) == ("cfg-config", 1)
    missing = await evals.post(
        "/v1/evals/runs",
        json={
            "prompt": "cfg",
            "version": version,
            "config_version": 9,
            "dataset": {"name": "cfg-cases"},
            "scorers": [{"kind": "exact_match"}],
        },
        headers=admin,
    )
    assert missing.status_code == 404, missing.text
    assert (await finished(evals, admin, run["id"]))["items_passed"] == 1


async def test_bad_scorers_and_missing_datasets_are_refused_before_a_run_exists(
    evals: AppClient, admin: dict[str, str], make_key: KeyFactory
) -> None:
    version = await publish(evals, admin, "refused")
    await dataset(evals, admin, "refused-cases", answers(("x", "x")))
    base = {"prompt": "refused", "version": version, "dataset": {"name": "refused-cases"}}
    bad = await evals.post("/v1/evals/runs", json={**base, "scorers": [{"kind": "nope"}]}, headers=admin)
    assert problem(bad)["type"] == "/problems/scorer_invalid"
    missing = await evals.post(
        "/v1/evals/runs",
        json={**base, "dataset": {"name": "nope"}, "scorers": [{"kind": "exact_match"}]},
        headers=admin,
    )
    assert missing.status_code == 404
    reader = await make_key(Scope.READ, name="reader")
    assert (
        await evals.post("/v1/evals/runs", json={**base, "scorers": [{"kind": "exact_match"}]}, headers=reader)
    ).status_code == 403
    assert (await evals.get("/v1/evals/runs", headers=reader)).json()["items"] == []


async def test_progress_streams_as_events_until_done(evals: AppClient, admin: dict[str, str]) -> None:
    version = await publish(evals, admin, "streamed")
    await dataset(evals, admin, "streamed-cases", answers(("a", "a"), ("b", "c")))
    run = await start_run(evals, admin, prompt="streamed", version=version, dataset={"name": "streamed-cases"})
    response = await evals.get(f"/v1/evals/runs/{run['id']}/events", headers=admin)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [
        (block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
        for block in response.text.strip().split("\n\n")
    ]
    names = [name for name, _ in events]
    assert names[-1] == "done"
    assert set(names[:-1]) == {"progress"}
    dones = [data["items_done"] for name, data in events if name == "progress"]
    assert dones == sorted(dones)
    assert dones[-1] == 2
    assert events[-1][1]["pass_rate"] == 0.5


async def test_compare_pairs_items_and_matches_mcnemar(evals: AppClient, admin: dict[str, str]) -> None:
    # Base passes every item; the candidate fails the first 6 (each template uses both variables).
    base_items = [
        {"variables": {"answer": "ok", "other": "ok" if i >= 6 else "bad"}, "expected": "ok"} for i in range(12)
    ]
    await dataset(evals, admin, "paired", base_items)
    base_version = await publish(evals, admin, "pair", template="{{ answer }}{{ other[:0] }}")
    candidate_version = await publish(evals, admin, "pair", template="{{ other }}{{ answer[:0] }}")
    base = await start_run(evals, admin, prompt="pair", version=base_version, dataset={"name": "paired"})
    candidate = await start_run(evals, admin, prompt="pair", version=candidate_version, dataset={"name": "paired"})
    await finished(evals, admin, base["id"])
    await finished(evals, admin, candidate["id"])
    response = await evals.get(
        "/v1/evals/compare", params={"base": base["id"], "candidate": candidate["id"]}, headers=admin
    )
    body = await ok(response)
    comparison: dict[str, Any] = body["comparison"]
    assert body["paired_items"] == 12
    assert comparison["regressed"] == [1, 2, 3, 4, 5, 6]
    assert comparison["improved"] == []
    expected = stats.binomtest(0, 6, 0.5).pvalue
    assert abs(comparison["mcnemar_p"] - expected) < 1e-9


async def test_a_second_run_at_temperature_0_is_answered_from_the_cache(
    settings: Settings, clean_database: AsyncEngine, admin: dict[str, str], stand_in: tuple[StandIn, str]
) -> None:
    server, url = stand_in
    server.requests.clear()
    overrides = {
        "backends": {"stand-in": backend(url, max_retries=0)},
        "eval_poll_seconds": 0.02,
        "completion_cache_ttl_seconds": 60.0,
        "redis_key_prefix": f"{settings.redis_key_prefix}cache-{uuid.uuid4().hex[:6]}:",
    }
    async with serve_in_process(create_app(settings.model_copy(update=overrides))) as client:
        version = await publish(client, admin, "cached", prices=(1.0, 1.0))
        # The exact cache keeps only the answers of prompts that store their inputs and outputs.
        stored = await client.patch("/v1/prompts/cached", json={"store_io": True}, headers=admin)
        assert stored.status_code == 200, stored.text
        await dataset(client, admin, "cached-cases", answers(("a", "a"), ("b", "b")))
        runs = []
        for _ in range(2):
            run = await start_run(client, admin, prompt="cached", version=version, dataset={"name": "cached-cases"})
            runs.append(await finished(client, admin, run["id"]))
        items = (await client.get(f"/v1/evals/runs/{runs[1]['id']}/items", headers=admin)).json()["items"]
    assert len(server.completions("echo")) == 2  # the second run asked the backend nothing
    assert runs[0]["cost"] > 0
    assert (runs[1]["items_passed"], runs[1]["cost"]) == (2, 0.0)
    assert all(item["cached"] for item in items)
