"""The /metrics answer as Prometheus reads it."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from tests.api import Client


async def test_metrics_content_type_is_prometheus_text_with_one_charset(client: Client) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert response.headers["content-type"].count("charset") == 1
