"""Signals only the database knows, exported for Prometheus (deploy/prometheus/alerts.yml alerts on them).

Refreshed by the process that evaluates alert rules (the worker, or a single ``all`` process) after each
evaluation round; every other process exports the families without samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True, slots=True)
class SignalSnapshot:
    budget_used: Mapping[str, float]  # key public id -> share of its monthly budget used
    rollouts_rolled_back: int
    firing: Mapping[tuple[str, str], int]  # (rule, kind) -> firing incidents


class AlertMetrics(Collector):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.snapshot: SignalSnapshot | None = None
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        budget = GaugeMetricFamily(
            "registry_api_key_budget_used_ratio",
            "Share of each budgeted API key's monthly budget used (the larger of tokens and cost; 1 is all of it).",
            labels=["key"],
        )
        rolled_back = GaugeMetricFamily(
            "registry_rollouts_rolled_back", "Rollouts that ended rolled back by their guardrails, ever."
        )
        firing = GaugeMetricFamily(
            "registry_alerts_firing", "Firing incidents of each of the registry's alert rules.", labels=["rule", "kind"]
        )
        snapshot = self.snapshot
        if snapshot is not None:
            for key, share in sorted(snapshot.budget_used.items()):
                budget.add_metric([key], share)
            rolled_back.add_metric([], snapshot.rollouts_rolled_back)
            for (rule, kind), count in sorted(snapshot.firing.items()):
                firing.add_metric([rule, kind], count)
        yield budget
        yield rolled_back
        yield firing
