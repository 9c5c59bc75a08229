"""A run answered from the exact cache does not pass latency or cost scorers on the cache's numbers: the cache
answers in a millisecond for nothing, which measured no model, so those scorers fail and say why."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.settings import Settings
from tests.completions.conftest import backend
from tests.conftest import serve_in_process
from tests.evals.conftest import answers, dataset, finished, publish, start_run
from tests.evals.stand_in import StandIn


async def test_a_cached_answer_fails_latency_and_cost_scorers_and_keeps_its_tokens(
    settings: Settings, clean_database: AsyncEngine, admin: dict[str, str], stand_in: tuple[StandIn, str]
) -> None:
    _, url = stand_in
    name = f"cached-{uuid.uuid4().hex[:6]}"
    overrides = {
        "backends": {"stand-in": backend(url, max_retries=0)},
        "eval_poll_seconds": 0.02,
        "completion_cache_ttl_seconds": 60.0,
        "redis_key_prefix": f"{settings.redis_key_prefix}{name}:",
    }
    scorers = [
        {"kind": "latency_max_ms", "max": 60_000},
        {"kind": "cost_max", "max": 1.0},
        {"kind": "tokens_max", "max": 1_000},
    ]
    async with serve_in_process(create_app(settings.model_copy(update=overrides))) as client:
        version = await publish(client, admin, name, prices=(1.0, 1.0))
        stored = await client.patch(f"/v1/prompts/{name}", json={"store_io": True}, headers=admin)
        assert stored.status_code == 200, stored.text
        await dataset(client, admin, f"{name}-cases", answers(("a", "a")))
        runs = []
        for _ in range(2):
            run = await start_run(
                client, admin, prompt=name, version=version, dataset={"name": f"{name}-cases"}, scorers=scorers
            )
            runs.append(await finished(client, admin, run["id"]))
        (first,) = (await client.get(f"/v1/evals/runs/{runs[0]['id']}/items", headers=admin)).json()["items"]
        (second,) = (await client.get(f"/v1/evals/runs/{runs[1]['id']}/items", headers=admin)).json()["items"]
    assert (first["cached"], first["passed"]) == (False, True)
    assert second["cached"]
    assert [s["passed"] for s in second["scores"]] == [False, False, True]
    assert all("came from the cache" in s["reason"] for s in second["scores"][:2])
