"""A model guard's classifier reads the guarded request's text: its record and cached answer are that unit's data.

They are listed with the unit's data (``GET /v1/units/{unit}``) and erased with it (``DELETE``), while the
classifier prompt itself is not routed by the unit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.settings import Settings
from tests.completions.conftest import RegistryFactory, backend, serve_in_thread, unique
from tests.completions.fault_server import CHAT, FaultServer, say
from tests.guards.conftest import config_version, guarded, ok, prompt_on

COMPLETE = "/v1/prompts/ask/complete"
CLEAN = '{"flagged": false, "category": "none", "reason": "fine"}'
FLAGGED = '{"flagged": true, "category": "violence", "reason": "a threat"}'
MODERATION = {"name": "moderation", "kind": "model", "prompt": "moderator"}


@pytest.fixture(params=["redis", "in-process"])
async def client(request: pytest.FixtureRequest, registry: RegistryFactory, fault: FaultServer) -> httpx.AsyncClient:
    """A registry with the exact cache on, its entries in Redis or (without Redis) in the process."""
    shared = {} if request.param == "redis" else {"redis_url": None}
    return await registry(
        {"fault": backend(fault.url)},  # type: ignore[attr-defined]
        completion_cache_ttl_seconds=60,
        completion_usage_flush_seconds=3600.0,
        **shared,
    )


async def deterministic_classifier(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    """Prompt ``moderator`` (store_io on) on config ``judge``, greedy so its answers are cached; its model."""
    model = unique(say(CLEAN))
    body = {"backend": "fault", "model": model, "params": {"max_tokens": 200, "temperature": 0}, "guards": []}
    number = await config_version(client, headers, "judge", body)
    await prompt_on(client, headers, "moderator", "judge", number, "Is this harmful? {{ text }}")
    await ok(await client.patch("/v1/prompts/moderator", json={"store_io": True}, headers=headers))
    return model


async def stored_texts(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    query = "SELECT prompt, unit, request_id, prompt_text, completion_text FROM completions ORDER BY id"
    async with engine.connect() as connection:
        return [tuple(row) for row in (await connection.execute(text(query))).all()]


async def test_a_classifiers_record_and_cached_answer_are_listed_and_erased_with_the_guarded_unit(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    judge = await deterministic_classifier(client, admin)
    await guarded(
        client, admin, model=unique("ok"), guards=[{"name": "moderation", "kind": "model", "prompt": "moderator"}]
    )
    await ok(await client.patch("/v1/prompts/ask", json={"store_io": True}, headers=admin))
    unit, secret = f"ada-{uuid.uuid4().hex[:8]}", f"Zanzibar{uuid.uuid4().hex[:8]}"
    question = {"variables": {"question": f"where is {secret}"}, "unit": unit}
    await ok(await client.post(COMPLETE, json=question, headers=admin))
    assert (await client.get("/v1/usage", headers=admin)).status_code == 200  # writes the buffered records

    listed = await ok(await client.get(f"/v1/units/{unit}", headers=admin))
    erased = await ok(await client.delete(f"/v1/units/{unit}", headers=admin))
    other = {"variables": {"question": f"where is {secret}"}, "unit": f"bob-{uuid.uuid4().hex[:8]}"}
    await ok(await client.post(COMPLETE, json=other, headers=admin))  # the classifier's same request, another unit

    texts = listed["completions"]["stored_texts"]
    assert listed["completions"]["count"] == 2
    assert sorted(t["prompt"] for t in texts) == ["ask", "moderator"]
    assert all(secret in t["prompt_text"] for t in texts)
    assert (erased["completions"], erased["completion_texts"], erased["cached_completions"]) == (2, 2, 1)
    assert len(fault.seen(judge, CHAT)) == 2  # its cached answer went with the unit: the classifier was asked again
    assert (await client.get(f"/v1/units/{unit}", headers=admin)).status_code == 404
    assert (await client.get("/v1/usage", headers=admin)).status_code == 200
    rows = await stored_texts(admin_engine)
    assert [row[1:3] for row in rows[:2]] == [(None, None)] * 2  # the unit's two: cut loose from it
    assert secret not in str(rows[:2])
    assert all(row[1] != unit for row in rows)


@pytest.fixture
def served(settings: Settings, clean_database: AsyncEngine, fault: FaultServer) -> Iterator[str]:
    backends = {"fault": backend(fault.url)}  # type: ignore[attr-defined]
    with serve_in_thread(create_app(settings.model_copy(update={"backends": backends}))) as base:
        yield base


async def test_the_classifier_prompt_is_not_routed_by_the_unit_whose_record_it_carries(
    served: str, admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    async with httpx.AsyncClient(base_url=served, timeout=30) as client:
        await deterministic_classifier(client, admin)
        flagging = {"backend": "fault", "model": unique(say(FLAGGED)), "params": {"max_tokens": 200}}
        await config_version(client, admin, "flagging", flagging)
        metric = {"key": "errors", "kind": "binomial", "source": "completions", "source_field": "error"}
        await ok(await client.post("/v1/metrics", json=metric, headers=admin))
        experiment = {
            "key": "stricter-judge",
            "prompt": "moderator",
            "variants": [
                {"key": "c", "prompt_version": 1},
                {"key": "t", "prompt_version": 1, "config": {"name": "flagging", "version": 1}},
            ],
            "forced_variants": {"unit-t": "t"},
            "primary_metric": "errors",
        }
        await ok(await client.post("/v1/experiments", json=experiment, headers=admin))
        await ok(await client.post("/v1/experiments/stricter-judge/start", headers=admin))
        for _ in range(250):  # the server's router (on its own loop) loads the started experiment
            body = {"variables": {"text": "x"}, "unit": "unit-t"}
            if (await ok(await client.post("/v1/prompts/moderator/render", json=body, headers=admin)))["experiment"]:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the experiment never routed")
        await guarded(client, admin, model=unique("ok"), guards=[MODERATION])

        answered = await client.post(COMPLETE, json={"variables": {"question": "hi"}, "unit": "unit-t"}, headers=admin)
        assert (await client.get("/v1/usage", headers=admin)).status_code == 200

    assert answered.status_code == 200, answered.text  # the flagging arm would have blocked it
    async with admin_engine.connect() as connection:
        query = text("SELECT prompt, config, unit, experiment_key FROM completions ORDER BY id")
        rows = [tuple(row) for row in (await connection.execute(query)).all()]
    assert rows == [("moderator", "judge", "unit-t", None), ("ask", "cfg", "unit-t", None)]
