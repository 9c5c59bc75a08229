"""Completions as an observation source of experiment metrics (``source: "completions"``).

A metric names what it reads of each of a unit's completions with ``source_field``:

- ``error``: 1 for a failed completion, else 0 (a cancelled one is not an error);
- ``latency_ms``, ``ttft_ms``: the registry's measured latency and time to first token
  (completions without one, such as failures before any token, give no observation);
- ``input_tokens``, ``output_tokens``, ``cost``;
- ``fallback_used``: 1 when the fallback config answered, else 0;
- ``cached``: 1 when a cache answered (the exact one or the semantic one), else 0;
- ``semantic_cache_hit``: 1 when the semantic cache answered, else 0;
- ``cache_similarity``: a semantic cache hit's similarity (other completions give no observation);
- ``guard_blocked``: 1 when a guard of the config blocked the input or the answer, else 0;
- ``guard_flagged``: 1 when a guard flagged it (and let it through), else 0;
- ``completions``: 1 per completion (the denominator of "per completion" ratios).

So ``error`` with aggregation ``any`` is "the unit saw an error", ``latency_ms`` as a quantile
metric is the p95 of the units' latencies, and ``error`` over ``completions`` as a ratio is the
error rate per completion. A completion that names an experiment counts for that experiment
only, like an event posted with one. A model guard's classifier's completions carry the unit of the
completion they checked, yet give no observation (``guard_check``): that completion, whose latency includes
the check, is the unit's one. The usage recorder queues the units of the completions it
writes in the same transaction (``UsageRecorder.flush``), so the aggregator folds them in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from registry.completions.repository import CompletionRepository
from registry.experiments.aggregation import Observation
from registry.experiments.sources import MetricSource


def _flag(value: Any) -> float:
    return 1.0 if value else 0.0


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


# field -> (the completions column it reads, how a stored value becomes an observation; None: no observation)
FIELDS: dict[str, tuple[str, Callable[[Any], float | None]]] = {
    "error": ("status", lambda status: 1.0 if status == "error" else 0.0),
    "latency_ms": ("latency_ms", _number),
    "ttft_ms": ("ttft_ms", _number),
    "input_tokens": ("input_tokens", _number),
    "output_tokens": ("output_tokens", _number),
    "cost": ("cost", _number),
    "fallback_used": ("fallback_used", _flag),
    "cached": ("cached", _flag),
    "semantic_cache_hit": ("cache_similarity", lambda similarity: 0.0 if similarity is None else 1.0),
    "cache_similarity": ("cache_similarity", _number),
    "guard_blocked": ("guard_blocked", _flag),  # the blocking guard's name, or NULL
    "guard_flagged": ("guard_flagged", _flag),
    "completions": ("id", lambda _: 1.0),
}


class CompletionSource:
    """Per-completion measures of the units' completions, as observations of the metrics that read them."""

    def accepts_field(self, field: str | None) -> bool:
        return field in FIELDS

    async def observations(
        self, session: AsyncSession, units: Sequence[str], metrics: Sequence[MetricSource]
    ) -> dict[str, list[Observation]]:
        readers = [
            (metric.metric_id, FIELDS[metric.source_field], FIELDS.get(metric.denominator_field or ""))
            for metric in metrics
            if metric.source_field in FIELDS
        ]
        if not readers or not units:
            return {}
        columns = sorted({column for _, (column, _), _ in readers} | {d[0] for _, _, d in readers if d is not None})
        position = {column: 3 + i for i, column in enumerate(columns)}
        found: dict[str, list[Observation]] = {}
        for found_row in await CompletionRepository(session).measures_of_units(units, columns):
            row: tuple[Any, ...] = tuple(found_row)
            unit, created_at, experiment_id = row[0], row[1], row[2]
            for metric_id, (column, convert), denominator in readers:
                value = convert(row[position[column]])
                if value is None:
                    continue
                observation = Observation(metric_id, created_at, value, experiment_id)
                if denominator is not None:
                    denominator_value = denominator[1](row[position[denominator[0]]])
                    if denominator_value is None:
                        continue
                    observation.denominator = denominator_value
                found.setdefault(unit, []).append(observation)
        return found
