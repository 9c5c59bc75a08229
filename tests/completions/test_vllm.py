"""Completions against a real vLLM engine (CPU, tiny random-weight model).

The model's words are random: these tests check the protocol — versions,
usage, streaming order, determinism, limits — not the text.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from tests.completions.conftest import RegistryFactory, backend, parse_sse, publish
from tests.conftest import KeyFactory, count_rows, problem

# The first test also waits for vLLM to install (once per machine, ~70 s) and start (~20 s).
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.fixture
async def vllm(registry: RegistryFactory, vllm_url: str) -> httpx.AsyncClient:
    return await registry({"local": backend(vllm_url, first_token_timeout=30, total_timeout=60)})


async def test_chat_completion_returns_text_usage_and_versions(
    vllm: httpx.AsyncClient, admin: dict[str, str], make_key: KeyFactory, admin_engine: AsyncEngine
) -> None:
    await publish(vllm, admin, backend="local", model="tiny", params={"max_tokens": 8}, prices=(1.0, 2.0))
    reader = await make_key(Scope.READ, name="app")

    response = await vllm.post("/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}}, headers=reader)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prompt"] == "greet"
    assert body["version"] == 1
    assert body["config"] == {"name": "cfg", "version": 1, "backend": "local", "model": "tiny"}
    assert body["finish_reason"] in ("length", "stop")
    assert body["usage"]["input_tokens"] > 0
    assert 0 < body["usage"]["output_tokens"] <= 8
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + body["usage"]["output_tokens"]
    expected_cost = (body["usage"]["input_tokens"] * 1.0 + body["usage"]["output_tokens"] * 2.0) / 1e6
    assert body["cost"] == pytest.approx(expected_cost)
    assert body["latency_ms"] > 0
    assert 0 < body["ttft_ms"] <= body["latency_ms"]
    assert body["fallback_used"] is False
    assert body["cached"] is False
    assert isinstance(body["text"], str)


async def test_text_prompt_uses_the_completions_endpoint(vllm: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await publish(vllm, admin, backend="local", model="tiny", kind="text", template="Once upon a {{ name }}")

    response = await vllm.post("/v1/prompts/greet/complete", json={"variables": {"name": "time"}}, headers=admin)

    assert response.status_code == 200, response.text
    assert response.json()["usage"]["output_tokens"] > 0


async def test_stream_sends_metadata_first_then_deltas_then_usage(
    vllm: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await publish(vllm, admin, backend="local", model="tiny", params={"max_tokens": 12, "temperature": 0.8})

    async with vllm.stream(
        "POST", "/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}, "stream": True}, headers=admin
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join([chunk async for chunk in response.aiter_text()])

    events = parse_sse(raw)
    names = [name for name, _ in events]
    assert names[0] == "metadata"
    assert names[-1] == "done"
    assert set(names[1:-1]) == {"delta"}
    deltas = [body for name, body in events if name == "delta"]
    # Tokens that arrive in one read go out as one delta, so how many deltas depends on timing: between one
    # and one per token, each a piece of the text.
    assert 1 <= len(deltas) <= events[-1][1]["usage"]["output_tokens"]
    assert all(isinstance(d["text"], str) for d in deltas)
    assert events[0][1]["version"] == 1
    assert events[0][1]["config"]["name"] == "cfg"
    done = events[-1][1]
    assert done["usage"]["output_tokens"] > 0
    assert done["usage"]["input_tokens"] > 0
    assert done["finish_reason"] in ("length", "stop")


async def test_same_seed_gives_same_text_at_nonzero_temperature(vllm: httpx.AsyncClient, admin: dict[str, str]) -> None:
    await publish(vllm, admin, backend="local", model="tiny", params={"max_tokens": 16, "temperature": 1.0})
    request = {"variables": {"name": "Ada"}, "seed": 1234}

    first, second = [
        (await vllm.post("/v1/prompts/greet/complete", json=request, headers=admin)).json()["text"] for _ in range(2)
    ]
    others = {
        (await vllm.post("/v1/prompts/greet/complete", json={**request, "seed": seed}, headers=admin)).json()["text"]
        for seed in (1, 2, 3)
    }

    assert first == second
    assert len(others | {first}) > 1  # the seed matters: random weights at temperature 1 vary with it


async def test_prompt_longer_than_the_context_is_refused_before_the_call(
    vllm: httpx.AsyncClient, admin: dict[str, str], vllm_url: str, admin_engine: AsyncEngine
) -> None:
    await publish(vllm, admin, backend="local", model="tiny", template="{{ text }}")
    before = await _vllm_requests(vllm_url)

    response = await vllm.post(
        "/v1/prompts/greet/complete", json={"variables": {"text": "lorem ipsum " * 400}}, headers=admin
    )

    body = problem(response)
    assert response.status_code == 422
    assert body["type"] == "/problems/context_length_exceeded"
    assert body["max_context_tokens"] == 512
    assert body["prompt_tokens"] > 512
    assert await _vllm_requests(vllm_url) == before
    await vllm.get("/v1/usage", headers=admin)  # flushes the usage buffer
    assert await count_rows(admin_engine, "completions") == 0


async def test_sixteen_concurrent_completions_all_succeed(
    vllm: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    await publish(vllm, admin, backend="local", model="tiny", params={"max_tokens": 8})

    async def one(index: int) -> httpx.Response:
        return await vllm.post(
            "/v1/prompts/greet/complete",
            json={"variables": {"name": f"n{index}"}, "stream": index % 2 == 0},
            headers=admin,
        )

    responses = await asyncio.gather(*(one(i) for i in range(16)))

    assert [r.status_code for r in responses] == [200] * 16
    usage = (await vllm.get("/v1/usage", params={"group_by": "prompt"}, headers=admin)).json()
    assert usage["items"][0]["requests"] == 16
    assert usage["items"][0]["errors"] == 0
    async with admin_engine.connect() as connection:
        streamed = (await connection.execute(text("SELECT count(*) FROM completions WHERE stream"))).scalar_one()
    assert streamed == 8


async def test_a_stream_the_caller_leaves_records_the_tokens_vllm_generated(
    vllm: httpx.AsyncClient, admin: dict[str, str], vllm_url: str, admin_engine: AsyncEngine
) -> None:
    params = {"max_tokens": 400, "temperature": 0.8, "extra": {"ignore_eos": True}}
    await publish(vllm, admin, backend="local", model="tiny", params=params, prices=(1.0, 2.0))
    before = await _vllm_metrics(vllm_url)

    deltas = 0
    request = {"variables": {"name": "Ada"}, "stream": True}
    async with vllm.stream("POST", "/v1/prompts/greet/complete", json=request, headers=admin) as response:
        async for line in response.aiter_lines():
            deltas += line == "event: delta"
            if deltas == 3:
                break
    for _ in range(200):  # vLLM aborts the request when the registry closes its connection
        after = await _vllm_metrics(vllm_url)
        if after["vllm:num_requests_running"] == 0:
            break
        await asyncio.sleep(0.05)
    await vllm.get("/v1/usage", headers=admin)  # flushes the usage buffer
    async with admin_engine.connect() as connection:
        query = text("SELECT status, input_tokens, output_tokens, cost FROM completions")
        status, input_tokens, output_tokens, cost = (await connection.execute(query)).one()

    generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert after["vllm:num_requests_running"] == 0
    assert status == "cancelled"
    assert input_tokens == after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"]
    assert 3 <= output_tokens <= generated < 400  # what the registry read of what vLLM made before it stopped
    assert cost == pytest.approx((input_tokens * 1.0 + output_tokens * 2.0) / 1e6)


async def _vllm_metrics(vllm_url: str) -> dict[str, float]:
    """vLLM's Prometheus series, summed over their labels."""
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{vllm_url}/metrics")).text
    totals: dict[str, float] = defaultdict(float)
    for line in metrics.splitlines():
        if line.startswith("vllm:"):
            series, value = line.rsplit(" ", 1)
            totals[series.split("{", 1)[0]] += float(value)
    return totals


async def _vllm_requests(vllm_url: str) -> float:
    """Requests vLLM has finished, from its Prometheus metrics."""
    return (await _vllm_metrics(vllm_url))["vllm:request_success_total"]
