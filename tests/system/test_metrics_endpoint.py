"""The /metrics answer as Prometheus reads it."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from tests.api import Client, Headers, create_prompt, create_version


async def test_metrics_content_type_is_prometheus_text_with_one_charset(client: Client) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert response.headers["content-type"].count("charset") == 1


def sample(metrics: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(line_start + " ")]
    assert len(values) == 1, f"{line_start} not in /metrics"
    return values[0]


async def test_metrics_report_the_process_database_pool_redis_and_prompt_cache(client: Client, admin: Headers) -> None:
    await create_prompt(client, admin, "cached")
    await create_version(client, admin, "cached", template="Hi {{ name }}")
    promote = {"to": "production", "expected_current": None}
    assert (await client.post("/v1/prompts/cached/versions/1/promote", json=promote, headers=admin)).status_code == 200
    render = {"variables": {"name": "Ada"}}
    for _ in range(3):
        assert (await client.post("/v1/prompts/cached/render", json=render, headers=admin)).status_code == 200

    metrics = (await client.get("/metrics")).text

    assert sample(metrics, 'registry_prompt_cache_lookups_total{result="miss"}') == 1
    assert sample(metrics, 'registry_prompt_cache_lookups_total{result="hit"}') == 2
    assert sample(metrics, 'registry_prompt_cache_lookups_total{result="stale"}') == 0
    assert sample(metrics, "registry_prompt_cache_entries") == 1
    assert sample(metrics, 'registry_db_pool_connections{database="primary",state="checked_out"}') >= 0
    assert sample(metrics, 'registry_db_pool_size{database="primary"}') >= 1
    assert sample(metrics, "registry_redis_connected") == 1
    assert sample(metrics, "process_resident_memory_bytes") > 0
    assert sample(metrics, "process_cpu_seconds_total") > 0
