"""Merging the metrics snapshots of a server's worker processes (``registry.lib.metrics.merge_snapshots``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from registry.lib.metrics import merge_snapshots


def snapshot(requests: float, latency_count: float, created: float, breaker: float) -> list[dict[str, Any]]:
    return [
        {
            "name": "registry_http_requests",
            "type": "counter",
            "documentation": "HTTP requests.",
            "samples": [
                ["registry_http_requests_total", {"route": "/health", "status": "200"}, requests],
                ["registry_http_requests_created", {"route": "/health", "status": "200"}, created],
            ],
        },
        {
            "name": "registry_latency_seconds",
            "type": "histogram",
            "documentation": "Latency.",
            "samples": [
                ["registry_latency_seconds_bucket", {"le": "0.1"}, latency_count],
                ["registry_latency_seconds_bucket", {"le": "+Inf"}, latency_count],
                ["registry_latency_seconds_count", {}, latency_count],
                ["registry_latency_seconds_sum", {}, latency_count / 100],
            ],
        },
        {
            "name": "registry_backend_breaker_state",
            "type": "gauge",
            "documentation": "Breaker state.",
            "samples": [["registry_backend_breaker_state", {"backend": "local"}, breaker]],
        },
    ]


def samples(snapshots: dict[int, list[dict[str, Any]]], running: set[int]) -> dict[tuple[str, str], float]:
    merged = merge_snapshots(snapshots, running=running.__contains__)
    return {
        (sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))): sample.value
        for family in merged
        for sample in family.samples
    }


def test_counters_and_histograms_are_summed_and_gauges_kept_per_running_worker() -> None:
    merged = samples({101: snapshot(16, 16, 50.0, 0), 102: snapshot(14, 14, 40.0, 2)}, running={101, 102})
    assert merged[("registry_http_requests_total", "route=/health,status=200")] == 30
    assert merged[("registry_http_requests_created", "route=/health,status=200")] == 40.0  # the earliest
    assert merged[("registry_latency_seconds_bucket", "le=+Inf")] == 30
    assert merged[("registry_latency_seconds_count", "")] == 30
    assert merged[("registry_backend_breaker_state", "backend=local,worker=101")] == 0
    assert merged[("registry_backend_breaker_state", "backend=local,worker=102")] == 2


def test_an_exited_workers_counts_stay_in_the_totals_and_its_gauges_go() -> None:
    merged = samples({101: snapshot(16, 16, 50.0, 0), 102: snapshot(14, 14, 40.0, 2)}, running={101})
    assert merged[("registry_http_requests_total", "route=/health,status=200")] == 30  # no counter reset
    assert ("registry_backend_breaker_state", "backend=local,worker=102") not in merged


def test_the_merge_renders_as_prometheus_text() -> None:
    families = merge_snapshots({101: snapshot(16, 16, 50.0, 0), 102: snapshot(14, 14, 40.0, 2)}, running=bool)

    class Merged(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())
    text = generate_latest(registry).decode()
    assert 'registry_http_requests_total{route="/health",status="200"} 30.0' in text
    assert "# TYPE registry_latency_seconds histogram" in text
