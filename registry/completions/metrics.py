"""Prometheus metrics of completions, on the app's registry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from registry.completions.policy import BreakerStatus
from registry.lib.metrics import LATENCY_BUCKETS

BREAKER_VALUES = {BreakerStatus.CLOSED: 0, BreakerStatus.HALF_OPEN: 1, BreakerStatus.OPEN: 2}


class CompletionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.upstream_latency = Histogram(
            "registry_upstream_latency_seconds",
            "Time from sending a completion request to the backend to its last token.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_ttft = Histogram(
            "registry_upstream_ttft_seconds",
            "Time from sending a completion request to the backend to its first token.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "registry_completion_tokens_total",
            "Tokens processed by backends, by direction (input, output).",
            ["backend", "direction"],
            registry=registry,
        )
        self.cost = Counter(
            "registry_completion_cost_total", "Cost of completions from config prices.", ["backend"], registry=registry
        )
        self.completions = Counter(
            "registry_completions_total",
            "Completions by status (ok, error, cancelled) and whether cached or served by a fallback.",
            ["status", "cached", "fallback"],
            registry=registry,
        )
        self.errors = Counter(
            "registry_completion_errors_total", "Failed completions by problem type.", ["type"], registry=registry
        )
        self.upstream_errors = Counter(
            "registry_upstream_errors_total",
            "Failed upstream attempts (retried ones included) by backend and problem type.",
            ["backend", "type"],
            registry=registry,
        )
        self.retries = Counter("registry_upstream_retries_total", "Upstream retries.", ["backend"], registry=registry)
        self.breaker_state = Gauge(
            "registry_backend_breaker_state",
            "Circuit breaker of each backend: 0 closed, 1 half-open, 2 open.",
            ["backend"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "registry_backend_in_flight", "Requests in flight to each backend.", ["backend"], registry=registry
        )
        self.guard_outcomes = Counter(
            "registry_guard_outcomes_total",
            "What config guards did, by guard name, stage (input, output) and outcome "
            "(blocked, redacted, flagged, passed, error).",
            ["guard", "stage", "outcome"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "registry_backend_queue_depth", "Requests waiting for a backend slot.", ["backend"], registry=registry
        )
        self.awaiting_first_token = Gauge(
            "registry_backend_awaiting_first_token",
            "Requests each backend took (answered 200) and has sent no token for yet: in its own queue, or reading "
            "the prompt. Each is charged its prompt even if it ends now.",
            ["backend"],
            registry=registry,
        )

        self.usage_unstored = Counter(
            "registry_usage_records_unstored_total",
            "Usage records that will never be written, by reason: refused (the database refused the record's data; "
            "logged with its request id) or overflow (the buffer was full while the database was unreachable).",
            ["reason"],
            registry=registry,
        )
        self.usage_unstored_cost = Counter(
            "registry_usage_unstored_cost_total",
            "Cost of the usage records that will never be written: missing from usage reports and alerts, still "
            "counted against its key's budget by the process that gave them up, until the month ends.",
            ["reason"],
            registry=registry,
        )

        self.semantic_cache = Counter(
            "registry_semantic_cache_lookups_total",
            "Semantic cache lookups by outcome: hit, miss, or unavailable (the embedding backend or the database "
            "failed, and the model answered as usual).",
            ["outcome"],
            registry=registry,
        )
        self.semantic_similarity = Histogram(
            "registry_semantic_cache_similarity",
            "The best similarity each semantic cache lookup with candidates found, hit or not "
            "(for choosing thresholds).",
            buckets=(0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 1.0),
            registry=registry,
        )
        self.semantic_cache_skips = Counter(
            "registry_semantic_cache_store_skips_total",
            "Answers the semantic cache did not keep, by reason: personal_data (the request's variables or text, "
            "or the answer, hold what the redaction detectors find; another unit's request could be served it), "
            "nul (the answer holds a NUL, which PostgreSQL cannot store), long_finish_reason (the backend's finish "
            "reason is longer than its column).",
            ["reason"],
            registry=registry,
        )
        self.semantic_cache_store_errors = Counter(
            "registry_semantic_cache_store_errors_total",
            "Answers that could not be kept in the semantic cache (the database failed).",
            registry=registry,
        )

    def count_guard_outcomes(self, outcomes: Sequence[Mapping[str, Any]]) -> None:
        """One completion's guard outcomes (registry.guards.engine.GuardLog)."""
        for outcome in outcomes:
            self.guard_outcomes.labels(outcome["guard"], outcome["stage"], outcome["outcome"]).inc()

    def count_unstored(self, reason: str, records: int, cost: float) -> None:
        """Usage records given up on (``UsageRecorder.on_unstored``)."""
        self.usage_unstored.labels(reason).inc(records)
        if cost > 0:
            self.usage_unstored_cost.labels(reason).inc(cost)

    def breaker_changed(self, backend: str, status: BreakerStatus) -> None:
        self.breaker_state.labels(backend).set(BREAKER_VALUES[status])
