"""The exact cache where it meets the context check, through both completion doors, whole and streamed."""

from __future__ import annotations

from tests.completions.conftest import RegistryFactory, backend, publish, registry, unique  # noqa: F401 - a fixture
from tests.completions.fault_server import FaultServer


async def test_an_exact_cache_hit_does_not_ask_the_backend_to_count_its_prompt_through_either_door(
    registry: RegistryFactory,  # noqa: F811
    admin: dict[str, str],
    fault: FaultServer,
) -> None:
    client = await registry({"fault": backend(fault.url)}, completion_cache_ttl_seconds=60)  # type: ignore[attr-defined]
    model = unique("ok")
    # A context of 40 tokens: the prompt's byte bound does not clear it, so a request is counted (/tokenize).
    params = {"max_tokens": 8, "temperature": 0}
    await publish(client, admin, backend="fault", model=model, max_context_tokens=40, params=params, store_io=True)
    ours = {"variables": {"name": "Ada"}}
    door = {"model": "prompt:greet", "variables": {"name": "Ada"}}

    first = await client.post("/v1/prompts/greet/complete", json=ours, headers=admin)
    hits = [
        await client.post("/v1/prompts/greet/complete", json=ours, headers=admin),
        await client.post("/v1/prompts/greet/complete", json={**ours, "stream": True}, headers=admin),
        await client.post("/v1/chat/completions", json=door, headers=admin),
        await client.post("/v1/chat/completions", json={**door, "stream": True}, headers=admin),
    ]

    assert first.json()["cached"] is False
    assert [r.status_code for r in hits] == [200] * 4
    assert hits[0].json()["cached"] is True
    assert '"cached":true' in hits[1].text
    assert hits[2].headers["x-registry-cached"] == hits[3].headers["x-registry-cached"] == "true"
    # Counted once, for the request the model answered. Before, every hit was counted again at the backend
    # (and waited up to the first-token timeout for a backend that did not answer).
    assert [seen.path for seen in fault.seen(model)] == ["/tokenize", "/v1/chat/completions"]
