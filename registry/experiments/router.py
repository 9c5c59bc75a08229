"""Routes units to variants on the render path, from an in-process copy of the running experiments.

No database read happens while routing: running experiments are held in memory and re-read on
every change published on the bus (locally at once, on other replicas through Redis), after a bus
reconnection, and every ``experiment_refresh_seconds`` in case a notification was missed. A reload
is one query; until it completes the previous copy serves. Drafts never route: their forced units
are seen only through an explicit preview (``POST /v1/experiments/{key}/preview``).

Each experiment is turned into its routing copy on its own: one that cannot be (a defect in
loading its data) keeps its previous copy, or is not routed if it has none, and is counted in
``registry_experiments_unloadable`` and ``/ready``, while every other experiment keeps routing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry, Gauge
from prompt_registry_client.assignment import Assignment, BucketRange, Namespace, assign_variation, get_bucket_ranges
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.experiments.exposures import ExposureBuffer
from registry.experiments.models import Experiment
from registry.experiments.repository import ExperimentRepository
from registry.lib.changes import Change, ChangeBus
from registry.lib.errors import DatabaseUnavailableError, translate_exception
from registry.lib.logging import error_text
from registry.prompts.catalog import Routing
from registry.prompts.schemas import ExperimentOut, LinkedConfig
from registry.rollouts.plan import included_in_rollout

logger = structlog.get_logger("registry.experiments.router")

UNIT_ERASED = "unit_erased"  # action of an "experiment" change whose name is a unit's digest, not an experiment key


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
    rollout: bool = False  # backs a rollout: the candidate (second variant) by the rollout's percentage

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
            phase=experiment.phase,
            seed=experiment.hash_seed,
            hash_version=experiment.hash_version,
            coverage=experiment.coverage,
            weights=weights,
            namespace=experiment.namespace_range,
            variants=variants,
            rollout=experiment.kind == "rollout",
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
        if self.rollout:  # the share only grows, so a unit that got the candidate keeps it (registry.rollouts.plan)
            candidate = included_in_rollout(self.seed, unit, self.weights[-1])
            return Assignment(1 if candidate else 0, True, True)
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
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        bus: ChangeBus,
        exposures: ExposureBuffer,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._exposures = exposures
        self._by_prompt: dict[str, LiveExperiment] = {}  # one running experiment per prompt
        self._by_key: dict[str, LiveExperiment] = {}
        self._unloadable: dict[str, str] = {}  # key: why, as last logged
        self._unloadable_gauge = Gauge(
            "registry_experiments_unloadable",
            "Running experiments that could not be loaded: each keeps its previous copy, or is not routed.",
            registry=metrics_registry,
        )
        self._reload_wanted = False
        self._reloading: asyncio.Task[None] | None = None
        bus.subscribe(self._on_change)

    # -- the render path

    def route(self, prompt: str, unit: str) -> Routing | None:
        experiment = self._by_prompt.get(prompt)
        return None if experiment is None else self._route_running(experiment, unit)

    def _route_running(self, experiment: LiveExperiment, unit: str) -> Routing:
        assignment = experiment.assign(unit)
        if assignment.variation < 0:
            return experiment.outside or routing_of(experiment, -1)
        if assignment.hash_used:  # forced QA units are not part of the randomized sample
            variant = experiment.variants[assignment.variation]
            self._exposures.record(experiment.id, experiment.phase, unit, variant.key)
        return routing_of(experiment, assignment.variation)

    def running(self, key: str) -> LiveExperiment | None:
        return self._by_key.get(key)

    @property
    def unloadable(self) -> list[str]:
        """Keys of running experiments the last reload could not turn into a routing copy."""
        return sorted(self._unloadable)

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
                logger.warning("could not reload experiments; the periodic refresh retries", error=error_text(exc))
                return

    async def reload(self) -> None:
        """Re-read the running experiments; raises only when the database cannot be read at all."""
        experiments, failures = await self._load()
        live: dict[str, LiveExperiment] = {}
        for experiment in experiments:
            try:
                live[experiment.key] = LiveExperiment.of(experiment)
            except Exception as exc:
                failures[experiment.key] = f"{type(exc).__name__}: {exc}"
        for key in failures:  # one that cannot be loaded now routes as it did, if it did
            previous = self._by_key.get(key)
            if previous is not None:
                live[key] = previous
        self._by_key = live
        self._by_prompt = {e.prompt: e for e in live.values()}
        self._note_unloadable(failures)

    async def _load(self) -> tuple[list[Experiment], dict[str, str]]:
        """Running experiments, in one query, and those that could not be read (key: why).

        If the query fails for a reason other than the database being unreachable, each experiment
        is read on its own, so one that cannot be read does not hide the others.
        """
        try:
            async with self._sessionmaker() as session:
                return list(await ExperimentRepository(session).running()), {}
        except Exception as exc:
            if isinstance(translate_exception(exc), DatabaseUnavailableError):
                raise
        async with self._sessionmaker() as session:
            keys = await ExperimentRepository(session).running_keys()
        experiments: list[Experiment] = []
        failures: dict[str, str] = {}
        for key in keys:
            try:
                async with self._sessionmaker() as session:
                    experiment = await ExperimentRepository(session).get(key)
            except Exception as exc:
                if isinstance(translate_exception(exc), DatabaseUnavailableError):
                    raise
                failures[key] = f"{type(exc).__name__}: {exc}"
                continue
            if experiment is not None and experiment.status == "running":
                experiments.append(experiment)
        return experiments, failures

    def _note_unloadable(self, failures: dict[str, str]) -> None:
        """Log an experiment when it becomes unloadable (or its reason changes) and when it loads again:
        not on every periodic refresh."""
        for key, reason in failures.items():
            if self._unloadable.get(key) != reason:
                routed = "as last loaded" if key in self._by_key else "no"
                logger.error("experiment cannot be loaded", experiment=key, error=reason, routed=routed)
        for key in self._unloadable.keys() - failures.keys():
            logger.warning("experiment loaded again", experiment=key)
        self._unloadable = failures
        self._unloadable_gauge.set(len(failures))

    async def settled(self) -> None:
        """Wait for reloads already requested (tests, and callers that need their change applied here)."""
        while self._reloading is not None and not self._reloading.done():
            await asyncio.shield(self._reloading)

    async def stop(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloading


def routing_of(experiment: LiveExperiment, variation: int) -> Routing:
    """The routing of a variation (-1: outside the experiment, production version)."""
    if variation < 0:
        outside = ExperimentOut(key=experiment.key, phase=experiment.phase, variant=None, in_experiment=False)
        return Routing(outside, None)
    if experiment.routings:
        return experiment.routings[variation]
    variant = experiment.variants[variation]
    out = ExperimentOut(key=experiment.key, phase=experiment.phase, variant=variant.key, in_experiment=True)
    return Routing(out, variant.version, variant.config)
