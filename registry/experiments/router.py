"""Routes units to variants on the render path, from an in-process copy of the live experiments.

No database read happens while routing: running experiments (and drafts with
forced QA units) are held in memory and re-read on every change published on
the bus (locally at once, on other replicas through Redis), after a bus
reconnection, and every ``experiment_refresh_seconds`` in case a notification
was missed. A reload is one query; until it completes the previous copy serves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from prompt_registry_client.assignment import Assignment, BucketRange, Namespace, assign_variation, get_bucket_ranges
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.experiments.exposures import ExposureBuffer
from registry.experiments.models import Experiment
from registry.experiments.repository import ExperimentRepository
from registry.lib.changes import Change, ChangeBus
from registry.prompts.catalog import Routing
from registry.prompts.schemas import ExperimentOut, LinkedConfig

logger = structlog.get_logger("registry.experiments.router")

UNIT_ERASED = "unit_erased"  # action of an "experiment" change whose name is a unit id, not an experiment key


def normalized(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


@dataclass(frozen=True, slots=True)
class LiveVariant:
    key: str
    version: int
    config: LinkedConfig | None


@dataclass(frozen=True, slots=True)
class LiveExperiment:
    """What assignment needs of an experiment, frozen at load time."""

    id: int
    key: str
    prompt: str
    running: bool
    phase: int
    seed: str
    hash_version: int
    coverage: float
    weights: tuple[float, ...]
    namespace: Namespace | None
    variants: tuple[LiveVariant, ...]
    forced: Mapping[str, int] = field(default_factory=dict)
    # Derived once at load time, so routing a unit allocates nothing but its exposure.
    ranges: tuple[BucketRange, ...] = ()
    routings: tuple[Routing, ...] = ()
    outside: Routing | None = None

    @classmethod
    def of(cls, experiment: Experiment) -> LiveExperiment:
        variants = tuple(
            LiveVariant(v.key, v.prompt_version, LinkedConfig.of(v.config_version)) for v in experiment.variants
        )
        index = {v.key: i for i, v in enumerate(variants)}
        weights = tuple(normalized([v.weight for v in experiment.variants]))
        return cls(
            id=experiment.id,
            key=experiment.key,
            prompt=experiment.prompt.name,
            running=experiment.status == "running",
            phase=experiment.phase,
            seed=experiment.hash_seed,
            hash_version=experiment.hash_version,
            coverage=experiment.coverage,
            weights=weights,
            namespace=experiment.namespace_range,
            variants=variants,
            forced={unit: index[key] for unit, key in experiment.forced_variants.items() if key in index},
            ranges=tuple(get_bucket_ranges(len(variants), experiment.coverage, weights)),
            routings=tuple(
                Routing(
                    ExperimentOut(key=experiment.key, phase=experiment.phase, variant=v.key, in_experiment=True),
                    v.version,
                    v.config,
                )
                for v in variants
            ),
            outside=Routing(
                ExperimentOut(key=experiment.key, phase=experiment.phase, variant=None, in_experiment=False), None
            ),
        )

    def assign(self, unit: str) -> Assignment:
        return assign_variation(
            unit,
            key=self.key,
            variations=len(self.variants),
            seed=self.seed,
            hash_version=self.hash_version,
            coverage=self.coverage,
            weights=self.weights,
            namespace=self.namespace,
            forced=self.forced,
            ranges=self.ranges,
        )


class ExperimentRouter:
    """The catalog's ``VariantRouter``: assigns units and buffers their first exposures."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], bus: ChangeBus, exposures: ExposureBuffer
    ) -> None:
        self._sessionmaker = sessionmaker
        self._exposures = exposures
        self._by_prompt: dict[str, list[LiveExperiment]] = {}
        self._by_key: dict[str, LiveExperiment] = {}
        self._reload_wanted = False
        self._reloading: asyncio.Task[None] | None = None
        bus.subscribe(self._on_change)

    # -- the render path

    def route(self, prompt: str, unit: str) -> Routing | None:
        for experiment in self._by_prompt.get(prompt, ()):
            if experiment.running:
                return self._route_running(experiment, unit)
            variation = experiment.forced.get(unit)
            if variation is not None:  # a QA unit previews a draft
                return self._routing(experiment, variation)
        return None

    def _route_running(self, experiment: LiveExperiment, unit: str) -> Routing:
        assignment = experiment.assign(unit)
        if assignment.variation < 0:
            return experiment.outside or self._routing(experiment, -1)
        if assignment.hash_used:  # forced QA units are not part of the randomized sample
            variant = experiment.variants[assignment.variation]
            self._exposures.record(experiment.id, experiment.phase, unit, variant.key)
        return self._routing(experiment, assignment.variation)

    @staticmethod
    def _routing(experiment: LiveExperiment, variation: int) -> Routing:
        if variation < 0:
            outside = ExperimentOut(key=experiment.key, phase=experiment.phase, variant=None, in_experiment=False)
            return Routing(outside, None)
        if experiment.routings:
            return experiment.routings[variation]
        variant = experiment.variants[variation]
        out = ExperimentOut(key=experiment.key, phase=experiment.phase, variant=variant.key, in_experiment=True)
        return Routing(out, variant.version, variant.config)

    def running(self, key: str) -> LiveExperiment | None:
        experiment = self._by_key.get(key)
        return experiment if experiment is not None and experiment.running else None

    # -- keeping the copy current

    def _on_change(self, change: Change) -> None:
        if change.kind == "experiment" and change.action == UNIT_ERASED:
            self._exposures.forget_unit(change.name)
        elif change.kind in ("experiment", "reset"):
            self.request_reload()

    def request_reload(self) -> None:
        self._reload_wanted = True
        if self._reloading is None or self._reloading.done():
            with contextlib.suppress(RuntimeError):  # no running loop: the periodic refresh will do
                self._reloading = asyncio.get_running_loop().create_task(self._reload_while_wanted())

    async def _reload_while_wanted(self) -> None:
        while self._reload_wanted:
            self._reload_wanted = False
            try:
                await self.reload()
            except Exception as exc:
                logger.warning("could not reload experiments; the periodic refresh retries", error=str(exc))
                return

    async def reload(self) -> None:
        async with self._sessionmaker() as session:
            experiments = await ExperimentRepository(session).live()
        live = [LiveExperiment.of(e) for e in experiments if e.status == "running" or e.forced_variants]
        by_prompt: dict[str, list[LiveExperiment]] = {}
        for experiment in sorted(live, key=lambda e: (not e.running, e.key)):
            by_prompt.setdefault(experiment.prompt, []).append(experiment)
        self._by_prompt = by_prompt
        self._by_key = {e.key: e for e in live}

    async def settled(self) -> None:
        """Wait for reloads already requested (tests, and callers that need their change applied here)."""
        while self._reloading is not None and not self._reloading.done():
            await asyncio.shield(self._reloading)

    async def stop(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloading
