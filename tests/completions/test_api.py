"""The completion API's contract: inputs, scopes, usage, budgets, cache and the storage policy."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from registry.prompts.catalog import Routing
from registry.prompts.schemas import ExperimentOut
from tests.completions.conftest import RegistryFactory, backend, parse_sse, publish, unique
from tests.completions.fault_server import FaultServer
from tests.conftest import KeyFactory, count_rows, problem
from tests.waiting import PATIENCE_SECONDS

COMPLETE = "/v1/prompts/greet/complete"
REQUEST = {"variables": {"name": "Ada"}}


@pytest.fixture
async def client(registry: RegistryFactory, fault: FaultServer) -> httpx.AsyncClient:
    return await registry({"fault": backend(fault.url)}, completion_cache_ttl_seconds=60)  # type: ignore[attr-defined]


@pytest.fixture
async def published(client: httpx.AsyncClient, admin: dict[str, str]) -> str:
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, max_context_tokens=4096, prices=(1.0, 3.0))
    return model


async def recorded(client: httpx.AsyncClient, admin: dict[str, str], engine: AsyncEngine) -> int:
    """Completions written so far (GET /v1/usage writes the buffer first)."""
    assert (await client.get("/v1/usage", headers=admin)).status_code == 200
    return await count_rows(engine, "completions")


# -- scopes and bad input: a problem, and nothing recorded


@pytest.mark.parametrize(
    ("scopes", "status"), [((), 401), ((Scope.ANALYZE,), 403), ((Scope.WRITE, Scope.PROMOTE), 403)]
)
async def test_complete_requires_a_key_with_read_scope(
    client: httpx.AsyncClient,
    published: str,
    admin: dict[str, str],
    make_key: KeyFactory,
    admin_engine: AsyncEngine,
    scopes: tuple[Scope, ...],
    status: int,
) -> None:
    headers = await make_key(*scopes) if scopes else {}

    response = await client.post(COMPLETE, json=REQUEST, headers=headers)

    assert response.status_code == status
    problem(response)
    assert await recorded(client, admin, admin_engine) == 0


@pytest.mark.parametrize(
    ("body", "status", "problem_type"),
    [
        ({"variables": {"name": "Ada"}, "temperature": 2}, 422, "validation_error"),
        ({"variables": {"name": "Ada"}, "max_tokens": 0}, 422, "validation_error"),
        ({"variables": {"name": "Ada"}, "max_tokens": 9}, 422, "validation_error"),
        ({"variables": {"name": "Ada"}, "label": "staging", "version": 1}, 422, "validation_error"),
        ({"variables": {"name": "Ada"}, "stream": "yes"}, 422, "validation_error"),
        ({"variables": {"name": "Ada"}, "version": 7}, 404, "prompt_version_not_found"),
        ({"variables": {"name": "Ada"}, "label": "staging"}, 404, "label_not_set"),
        ({"variables": []}, 422, "validation_error"),
    ],
    ids=[
        "unknown override",
        "max_tokens below 1",
        "max_tokens above the config's",
        "label and version",
        "stream not a boolean",
        "no such version",
        "no staging version",
        "variables not an object",
    ],
)
async def test_bad_request_is_a_problem_and_records_nothing(
    client: httpx.AsyncClient,
    published: str,
    admin: dict[str, str],
    admin_engine: AsyncEngine,
    fault: FaultServer,
    body: dict[str, Any],
    status: int,
    problem_type: str,
) -> None:
    response = await client.post(COMPLETE, json=body, headers=admin)

    assert response.status_code == status
    assert problem(response)["type"] == f"/problems/{problem_type}"
    assert fault.seen(published) == []
    assert await recorded(client, admin, admin_engine) == 0


async def test_unknown_prompt_is_404(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.post("/v1/prompts/nope/complete", json=REQUEST, headers=admin)

    assert response.status_code == 404
    assert problem(response)["type"] == "/problems/prompt_not_found"


async def test_malformed_json_is_400(client: httpx.AsyncClient, admin: dict[str, str], published: str) -> None:
    response = await client.post(COMPLETE, content=b"{not json", headers={**admin, "content-type": "application/json"})

    assert response.status_code == 400


async def test_prompt_without_a_config_cannot_run(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await client.post("/v1/prompts/", json={"name": "bare"}, headers=admin)
    await client.post("/v1/prompts/bare/versions", json={"kind": "text", "template": "hi"}, headers=admin)
    await client.post(
        "/v1/prompts/bare/versions/1/promote", json={"to": "production", "expected_current": None}, headers=admin
    )

    response = await client.post("/v1/prompts/bare/complete", json={}, headers=admin)

    assert response.status_code == 422
    assert problem(response)["type"] == "/problems/no_model_config"


async def test_config_naming_an_unconfigured_backend_is_refused(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await client.post("/v1/configs/", json={"name": "cfg"}, headers=admin)

    response = await client.post("/v1/configs/cfg/versions", json={"backend": "elsewhere", "model": "m"}, headers=admin)

    assert response.status_code == 422
    assert problem(response)["errors"][0]["field"] == "backend"


async def test_fallback_is_pinned_to_a_version_and_part_of_the_content(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await publish(client, admin, backend="fault", model="small", config="spare", prompt=None)
    await client.post("/v1/configs/", json={"name": "main"}, headers=admin)
    plain = {"backend": "fault", "model": "big"}

    first = await client.post("/v1/configs/main/versions", json=plain, headers=admin)
    with_fallback = await client.post(
        "/v1/configs/main/versions", json={**plain, "fallback": {"name": "spare", "label": "production"}}, headers=admin
    )
    unknown = await client.post(
        "/v1/configs/main/versions", json={**plain, "fallback": {"name": "missing"}}, headers=admin
    )

    assert first.json()["fallback"] is None
    assert with_fallback.status_code == 201
    assert with_fallback.json()["version"] == 2
    assert with_fallback.json()["fallback"] == {"config": "spare", "version": 1}
    assert unknown.status_code == 422
    assert problem(unknown)["errors"][0]["field"] == "fallback"


# -- usage


async def test_usage_aggregates_tokens_and_cost_by_prompt_version_config_key_and_day(
    client: httpx.AsyncClient, published: str, admin: dict[str, str], make_key: KeyFactory
) -> None:
    app_key = await make_key(Scope.READ, name="app")
    for headers in (app_key, app_key, admin):
        assert (await client.post(COMPLETE, json=REQUEST, headers=headers)).status_code == 200

    report = (await client.get("/v1/usage", headers=admin)).json()

    today = datetime.now(UTC).date().isoformat()
    rows = sorted(report["items"], key=lambda r: -r["requests"])
    assert report["group_by"] == ["prompt", "version", "config", "key", "day"]
    assert [r["requests"] for r in rows] == [2, 1]
    first = rows[0]
    assert (first["prompt"], first["version"], first["config"], first["day"]) == ("greet", 1, "cfg", today)
    assert first["input_tokens"] == 14
    assert first["output_tokens"] == 6
    assert first["cost"] == pytest.approx((14 * 1.0 + 6 * 3.0) / 1e6)
    assert first["errors"] == 0
    assert first["mean_latency_ms"] > 0
    assert first["mean_ttft_ms"] > 0


async def test_usage_records_errors_with_their_type(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer
) -> None:
    client = await registry({"fault": backend(fault.url, max_retries=0)})  # type: ignore[attr-defined]
    await publish(client, admin, backend="fault", model=unique("status:500:all"), max_context_tokens=4096)
    await client.post(COMPLETE, json=REQUEST, headers=admin)

    report = (await client.get("/v1/usage", params={"group_by": ["prompt"]}, headers=admin)).json()

    assert report["items"][0]["errors"] == 1


async def test_usage_needs_the_analyze_scope(client: httpx.AsyncClient, make_key: KeyFactory) -> None:
    reader = await make_key(Scope.READ)

    response = await client.get("/v1/usage", headers=reader)

    assert response.status_code == 403


async def test_usage_refuses_an_unknown_dimension(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.get("/v1/usage", params={"group_by": "colour"}, headers=admin)

    assert response.status_code == 422


# -- budgets


async def test_key_over_its_token_budget_gets_429_with_a_clear_message(
    client: httpx.AsyncClient, published: str, admin: dict[str, str], make_key: KeyFactory
) -> None:
    app_key = await make_key(Scope.READ, name="app")
    key_id = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]
    budget = await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": 10}, headers=admin)

    first = await client.post(COMPLETE, json=REQUEST, headers=app_key)  # 7 + 3 tokens: the whole budget
    second = await client.post(COMPLETE, json=REQUEST, headers=app_key)
    other = await client.post(COMPLETE, json=REQUEST, headers=admin)
    status = await client.get(f"/v1/keys/{key_id}/budget", headers=admin)

    assert budget.status_code == 200
    assert first.status_code == 200
    assert second.status_code == 429
    body = problem(second)
    assert body["type"] == "/problems/over_budget"
    assert "used 10 of its 10 tokens" in body["detail"]
    assert int(second.headers["retry-after"]) > 0
    assert other.status_code == 200
    assert status.json()["used_tokens"] == 10
    assert status.json()["monthly_tokens"] == 10


async def test_removing_a_budget_lets_the_key_run_again(
    client: httpx.AsyncClient, published: str, admin: dict[str, str], make_key: KeyFactory
) -> None:
    app_key = await make_key(Scope.READ, name="app")
    key_id = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]
    await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_cost": 0}, headers=admin)
    refused = await client.post(COMPLETE, json=REQUEST, headers=app_key)

    await client.put(f"/v1/keys/{key_id}/budget", json={}, headers=admin)
    allowed = await client.post(COMPLETE, json=REQUEST, headers=app_key)

    assert refused.status_code == 429
    assert "cost budget" in problem(refused)["detail"]
    assert allowed.status_code == 200


async def test_budgets_need_the_admin_scope(client: httpx.AsyncClient, make_key: KeyFactory) -> None:
    reader = await make_key(Scope.READ, Scope.ANALYZE)

    response = await client.put("/v1/keys/abc/budget", json={"monthly_tokens": 1}, headers=reader)

    assert response.status_code == 403


async def test_budget_of_an_unknown_key_is_404(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.put("/v1/keys/nosuchkey/budget", json={"monthly_tokens": 1}, headers=admin)

    assert response.status_code == 404


# -- response cache


async def publish_deterministic(client: httpx.AsyncClient, admin: dict[str, str]) -> str:
    """Prompt greet at temperature 0 with store_io on (the exact cache keeps only such prompts' answers)."""
    model = unique("ok")
    await publish(
        client, admin, backend="fault", model=model, params={"max_tokens": 8, "temperature": 0}, store_io=True
    )
    return model


async def test_deterministic_request_is_answered_from_cache_the_second_time(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer
) -> None:
    model = await publish_deterministic(client, admin)

    first = (await client.post(COMPLETE, json=REQUEST, headers=admin)).json()
    second = (await client.post(COMPLETE, json=REQUEST, headers=admin)).json()
    other_variables = (await client.post(COMPLETE, json={"variables": {"name": "Bo"}}, headers=admin)).json()
    report = (await client.get("/v1/usage", params={"group_by": "prompt"}, headers=admin)).json()

    assert first["cached"] is False
    assert second["cached"] is True
    assert second["text"] == first["text"]
    assert second["usage"] == first["usage"]
    assert second["cost"] == 0
    assert other_variables["cached"] is False
    assert len(fault.seen(model, "/v1/chat/completions")) == 2
    assert report["items"][0]["cached"] == 1
    assert report["items"][0]["output_tokens"] == 6  # cache hits used no backend tokens


async def test_cached_completion_streams_like_any_other(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer
) -> None:
    model = await publish_deterministic(client, admin)
    first = (await client.post(COMPLETE, json=REQUEST, headers=admin)).json()

    async with client.stream("POST", COMPLETE, json={**REQUEST, "stream": True}, headers=admin) as response:
        events = parse_sse("".join([chunk async for chunk in response.aiter_text()]))

    assert [name for name, _ in events] == ["metadata", "delta", "done"]
    assert events[0][1]["cached"] is True
    assert events[1][1]["text"] == first["text"]
    assert events[2][1]["usage"] == first["usage"]
    assert len(fault.seen(model, "/v1/chat/completions")) == 1


async def test_sampled_requests_are_not_cached_unless_seeded(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer
) -> None:
    model = unique("ok")
    params = {"max_tokens": 8, "temperature": 0.7}
    await publish(client, admin, backend="fault", model=model, params=params, store_io=True)

    unseeded = [(await client.post(COMPLETE, json=REQUEST, headers=admin)).json()["cached"] for _ in range(2)]
    seeded = [
        (await client.post(COMPLETE, json={**REQUEST, "seed": 5}, headers=admin)).json()["cached"] for _ in range(2)
    ]

    assert unseeded == [False, False]
    assert seeded == [False, True]


async def test_a_prompt_that_stores_no_inputs_and_outputs_neither_stores_in_nor_reads_the_exact_cache(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer
) -> None:
    model = await publish_deterministic(client, admin)
    assert (await client.post(COMPLETE, json=REQUEST, headers=admin)).json()["cached"] is False

    assert (await client.patch("/v1/prompts/greet", json={"store_io": False}, headers=admin)).status_code == 200
    while_off = [(await client.post(COMPLETE, json=REQUEST, headers=admin)).json()["cached"] for _ in range(2)]

    assert while_off == [False, False]  # the answer kept while store_io was on is not read, nor are new ones kept
    assert len(fault.seen(model, "/v1/chat/completions")) == 3


# -- storage policy


async def test_stored_texts_are_redacted_and_only_kept_when_the_prompt_enables_it(
    client: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    template = "Reply to {{ name }} at {{ email }}, card {{ card }}"
    variables = {"name": "Ada", "email": "ada@example.com", "card": "4111 1111 1111 1111"}
    await publish(client, admin, backend="fault", model=unique("ok"), template=template, store_io=True)
    await publish(client, admin, backend="fault", model="ok", prompt="quiet", config="cfg2", template=template)

    for name in ("greet", "quiet"):
        response = await client.post(f"/v1/prompts/{name}/complete", json={"variables": variables}, headers=admin)
        assert response.status_code == 200
    await client.get("/v1/usage", headers=admin)

    async with admin_engine.connect() as connection:
        result = await connection.execute(text("SELECT prompt, prompt_text || '|' || completion_text FROM completions"))
        rows = {prompt: stored for prompt, stored in result.all()}
    assert rows["greet"] == "user: Reply to Ada at [EMAIL], card [CARD]|Hello from the"
    assert rows["quiet"] is None


async def test_stored_texts_are_purged_after_the_retention_period(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    client = await registry(
        {"fault": backend(fault.url)},  # type: ignore[attr-defined]
        completion_io_retention_days=1,
        completion_io_purge_seconds=0.2,
    )
    await publish(client, admin, backend="fault", model=unique("ok"), store_io=True)
    for _ in range(2):
        await client.post(COMPLETE, json=REQUEST, headers=admin)
    await client.get("/v1/usage", headers=admin)
    oldest = "(SELECT min(id) FROM completions)"
    async with admin_engine.begin() as connection:
        await connection.execute(
            text(f"UPDATE completions SET created_at = now() - interval '2 days' WHERE id = {oldest}")
        )

    stored: list[Any] = []
    deadline = time.monotonic() + PATIENCE_SECONDS  # a hang guard only
    while time.monotonic() < deadline:
        async with admin_engine.connect() as connection:
            query = text("SELECT prompt_text IS NOT NULL FROM completions ORDER BY id")
            stored = list((await connection.execute(query)).scalars())
        if stored == [False, True]:
            break
        await asyncio.sleep(0.1)
    assert stored == [False, True]


async def test_storage_policy_is_set_by_patch_and_audited(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await client.post("/v1/prompts/", json={"name": "p"}, headers=admin)

    response = await client.patch("/v1/prompts/p", json={"store_io": True}, headers=admin)
    audit = (await client.get("/v1/audit/", params={"resource_name": "p"}, headers=admin)).json()

    assert response.status_code == 200
    assert response.json()["store_io"] is True
    assert audit["items"][0]["action"] == "prompt.storage_policy"
    assert audit["items"][0]["after"] == {"store_io": True}


# -- metrics


async def test_metrics_expose_upstream_latency_ttft_tokens_cost_and_queue(
    client: httpx.AsyncClient, published: str, admin: dict[str, str]
) -> None:
    await client.post(COMPLETE, json=REQUEST, headers=admin)

    metrics = (await client.get("/metrics")).text

    for series in (
        'registry_upstream_latency_seconds_count{backend="fault"} 1.0',
        'registry_upstream_ttft_seconds_count{backend="fault"} 1.0',
        'registry_completion_tokens_total{backend="fault",direction="output"} 3.0',
        'registry_completion_cost_total{backend="fault"}',
        'registry_backend_queue_depth{backend="fault"} 0.0',
        'registry_backend_awaiting_first_token{backend="fault"} 0.0',
        'registry_backend_breaker_state{backend="fault"} 0.0',
        'registry_completions_total{cached="false",fallback="false",status="ok"} 1.0',
    ):
        assert series in metrics


async def test_openapi_documents_the_completion_endpoints(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]

    assert paths["/v1/prompts/{name}/complete"]["post"]["operationId"] == "completePrompt"
    assert paths["/v1/usage"]["get"]["operationId"] == "completionUsage"
    assert paths["/v1/keys/{key_id}/budget"]["put"]["operationId"] == "setKeyBudget"


class OneExperiment:
    """Routes every unit but "outsider" into variant "b" of experiment "tone" (version 1)."""

    def route(self, prompt: str, unit: str) -> Routing | None:
        if unit == "outsider":
            return Routing(ExperimentOut(key="tone", phase=2, variant=None, in_experiment=False), version=None)
        return Routing(ExperimentOut(key="tone", phase=2, variant="b", in_experiment=True), version=1)


async def test_experiment_and_variant_are_returned_and_recorded(
    registry: RegistryFactory, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine
) -> None:
    client = await registry({"fault": backend(fault.url)}, router=OneExperiment())  # type: ignore[attr-defined]
    await publish(client, admin, backend="fault", model=unique("ok"), max_context_tokens=4096)

    routed = await client.post(COMPLETE, json={**REQUEST, "unit": "u-1"}, headers=admin)
    outside = await client.post(COMPLETE, json={**REQUEST, "unit": "outsider"}, headers=admin)
    report = (await client.get("/v1/usage", params={"group_by": ["experiment", "variant"]}, headers=admin)).json()

    assert routed.json()["experiment"] == {"key": "tone", "phase": 2, "variant": "b", "in_experiment": True}
    assert outside.json()["experiment"]["in_experiment"] is False
    groups = {(row["experiment"], row["variant"]): row["requests"] for row in report["items"]}
    assert groups == {("tone", "b"): 1, ("tone", None): 1}
    async with admin_engine.connect() as connection:
        units = set((await connection.execute(text("SELECT unit FROM completions"))).scalars())
    assert units == {"u-1", "outsider"}
