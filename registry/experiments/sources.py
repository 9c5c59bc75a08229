"""Where metric observations come from, by a metric's ``source``.

``events`` are the outcomes apps post to ``/v1/events``. Another domain adds
a source by implementing ``ObservationSource`` and registering it on the
runtime's ``experiments.sources``, as the runtime does with ``completions``
(``registry.completions.observations``: latency, time to first token, tokens,
cost, errors and fallbacks per completion, the metric's ``source_field``
naming which); it must also queue the units it records with
``IngestRepository.mark_units_changed`` in the same transaction, so the
aggregator folds them in. Metrics can only be defined on sources that are
registered. A ratio metric's observations carry its ``denominator_field`` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from registry.experiments.aggregation import Observation
from registry.experiments.repository import StatisticsRepository


@dataclass(frozen=True, slots=True)
class MetricSource:
    metric_id: int
    source: str
    source_field: str | None
    denominator_field: str | None = None  # ratio metrics: observations carry it as ``denominator``


class ObservationSource(Protocol):
    def accepts_field(self, field: str | None) -> bool:
        """Whether a metric may use this ``source_field`` (events take none)."""
        ...

    async def observations(
        self, session: AsyncSession, units: Sequence[str], metrics: Sequence[MetricSource]
    ) -> dict[str, list[Observation]]:
        """The observations of ``metrics`` for ``units``, by unit."""
        ...


class EventSource:
    """Outcome events posted by apps."""

    def accepts_field(self, field: str | None) -> bool:
        return field is None

    async def observations(
        self, session: AsyncSession, units: Sequence[str], metrics: Sequence[MetricSource]
    ) -> dict[str, list[Observation]]:
        return await StatisticsRepository(session).event_observations(units, [m.metric_id for m in metrics])


def default_sources() -> dict[str, ObservationSource]:
    return {"events": EventSource()}
