"""Prometheus metrics, on one registry per app so tests can build many apps."""

from __future__ import annotations

import contextlib
import json
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class _Latency:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0


class HttpMetrics(Collector):
    """Request counts and latency by method, route template and status.

    Counted in plain integers on the event loop and turned into Prometheus
    families only when scraped: every request updates these, and the client
    library's locked counters cost more than the fast path can spare.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[tuple[str, str], _Latency] = {}
        registry.register(self)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get((method, route))
        if latency is None:
            latency = self._latency[(method, route)] = _Latency()
        latency.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.total += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "registry_http_requests",
            "HTTP requests by method, route template and status.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in self._requests.items():
            requests.add_metric([method, route, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "registry_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            labels=["method", "route"],
        )
        for (method, route), observed in self._latency.items():
            cumulative, running = [], 0
            for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], observed.buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([method, route], cumulative, observed.total)
        yield latency


@runtime_checkable
class PoolState(Protocol):
    """What SQLAlchemy's queue pools report (SQLite's pools do not)."""

    def size(self) -> int: ...
    def checkedout(self) -> int: ...
    def checkedin(self) -> int: ...
    def overflow(self) -> int: ...


class PromptCacheState(Protocol):
    hits: int
    stale_hits: int
    misses: int

    @property
    def loaded(self) -> int: ...


@dataclass(eq=False)  # registries keep collectors in a dict
class RuntimeStateMetrics(Collector):
    """Database pools, the Redis subscription and the prompt cache, read when scraped (nothing on the request path)."""

    pools: dict[str, object]  # by database role ("primary", "read"); only queue pools are reported
    redis_connected: Callable[[], bool] | None  # None: Redis is not configured
    prompt_cache: PromptCacheState

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "registry_db_pool_connections",
            "Database connections of this process by pool and state (checked_out, idle, overflow).",
            labels=["database", "state"],
        )
        size = GaugeMetricFamily("registry_db_pool_size", "Connections a pool keeps open.", labels=["database"])
        for database, pool in self.pools.items():
            if not isinstance(pool, PoolState):
                continue
            connections.add_metric([database, "checked_out"], pool.checkedout())
            connections.add_metric([database, "idle"], pool.checkedin())
            connections.add_metric([database, "overflow"], max(pool.overflow(), 0))
            size.add_metric([database], pool.size())
        yield connections
        yield size
        if self.redis_connected is not None:
            yield GaugeMetricFamily(
                "registry_redis_connected",
                "1 while this process receives changes through Redis; 0 while Redis is unreachable (caches then "
                "expire after REGISTRY_CACHE_DEGRADED_TTL_SECONDS).",
                value=1 if self.redis_connected() else 0,
            )
        cache = self.prompt_cache
        lookups = CounterMetricFamily(
            "registry_prompt_cache_lookups",
            "Prompt cache lookups by result: hit (fresh), stale (served while the database is unreachable), miss "
            "(read from the database).",
            labels=["result"],
        )
        for result, count in (("hit", cache.hits), ("stale", cache.stale_hits), ("miss", cache.misses)):
            lookups.add_metric([result], count)
        yield lookups
        yield GaugeMetricFamily("registry_prompt_cache_entries", "Prompts held in this process's cache.", cache.loaded)


# Sample name suffixes that are timestamps, not amounts: merged by taking the earliest.
_TIMESTAMP_SUFFIXES = ("_created",)
_SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


class ProcessGroupMetrics:
    """Metrics of every worker process of one server, as one scrape.

    A server with several worker processes answers each scrape from one of them;
    reporting only that worker's counts makes totals jump between scrapes, which
    Prometheus reads as counter resets. So each worker publishes a snapshot of its
    registry to ``directory`` (every second and before answering a scrape), and a
    scrape merges all of them: counters and histograms are summed, gauges are kept
    per worker (a ``worker`` label) for workers still running. Snapshots of workers
    that exited stay, so their counts are never subtracted from the totals.
    """

    def __init__(self, registry: CollectorRegistry, directory: Path) -> None:
        self._registry = registry
        self._directory = directory
        self._pid = os.getpid()
        self._path = directory / f"{self._pid}.json"

    def publish(self) -> None:
        snapshot = [
            {
                "name": family.name,
                "type": family.type,
                "documentation": family.documentation,
                "samples": [[sample.name, sample.labels, sample.value] for sample in family.samples],
            }
            for family in self._registry.collect()
        ]
        partial = self._path.with_suffix(".tmp")
        partial.write_text(json.dumps(snapshot))
        os.replace(partial, self._path)  # readers see a whole snapshot or the previous one

    async def publish_async(self) -> None:
        self.publish()

    def exposition(self) -> bytes:
        """The Prometheus text of the whole process group, with this worker's counts as of now."""
        self.publish()
        snapshots: dict[int, list[dict[str, Any]]] = {}
        for path in self._directory.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                snapshots[int(path.stem)] = json.loads(path.read_text())
        merged = CollectorRegistry(auto_describe=False)
        merged.register(_MergedSnapshots(merge_snapshots(snapshots, running=_running)))
        return generate_latest(merged)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def merge_snapshots(snapshots: dict[int, list[dict[str, Any]]], *, running: Callable[[int], bool]) -> list[Metric]:
    """One family per metric name: amounts summed across workers, gauges labelled by worker (running ones only)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for pid in sorted(snapshots):
        for family in snapshots[pid]:
            name, kind = family["name"], family["type"]
            summed = kind in _SUMMED_TYPES
            if not summed and not running(pid):
                continue
            if name not in families:
                families[name] = Metric(name, family["documentation"], kind)
                values[name] = {}
            for sample_name, labels, value in family["samples"]:
                if not summed:
                    labels = {**labels, "worker": str(pid)}
                key = (sample_name, tuple(sorted(labels.items())))
                earlier = values[name].get(key)
                if earlier is None:
                    values[name][key] = value
                elif sample_name.endswith(_TIMESTAMP_SUFFIXES):
                    values[name][key] = min(earlier, value)
                else:
                    values[name][key] = earlier + value
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class _MergedSnapshots(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
