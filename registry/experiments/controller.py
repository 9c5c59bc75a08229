"""HTTP routes of experiments, metrics, outcome events, exposures and unit data.

Scopes:
- ``read``: list and show experiments and metrics, preview a unit's variant; post outcome events and
  exposures (the apps that render prompts report what happened, without the
  power to change prompts that ``write`` would give them);
- ``write``: define metrics, create and edit experiments (drafts never route
  units; on a running experiment, whatever changes the version a unit gets,
  forced variants included, also needs ``promote``);
- ``promote``: start and stop experiments (stopping with a winner promotes);
- ``analyze``: results, exports, and the data held on a unit;
- ``admin``: erasing a unit's data.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope, grants
from registry.auth.principal import Actor, Principal
from registry.experiments.export import ExportFormat, ExportService
from registry.experiments.ingest import EventService, ExposureService
from registry.experiments.privacy import UnitDataService
from registry.experiments.schemas import (
    CreateExperiment,
    CreateMetric,
    EventBatch,
    EventBatchOut,
    ExperimentDefinition,
    ExperimentPage,
    ExposureBatch,
    ExposureBatchOut,
    MetricOut,
    MetricPage,
    PreviewRequest,
    ResultsOut,
    Status,
    StopExperiment,
    StopOut,
    TimeseriesOut,
    UnitDataOut,
    UnitErasedOut,
    UpdateExperiment,
    UpdateMetric,
)
from registry.experiments.service import ExperimentService, MetricService
from registry.experiments.timeseries import Interval
from registry.lib.http import ENCODED_SLASH
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.schema import paginate
from registry.prompts.schemas import RenderOut
from registry.runtime import Runtime


def provide_experiment_service(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ExperimentService:
    return ExperimentService(db_session, runtime.prompt_limits)


def provide_analysis_service(
    read_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ExperimentService:
    """Results and exports read from the read replica, when one is configured."""
    return ExperimentService(read_session, runtime.prompt_limits)


def provide_metric_service(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> MetricService:
    return MetricService(db_session, runtime.experiments.sources)


def provide_event_service(db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]) -> EventService:
    experiments = runtime.experiments
    return EventService(db_session, experiments.event_limits, experiments.events, experiments.erasures)


def provide_unit_service(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> UnitDataService:
    return UnitDataService(
        db_session,
        runtime.experiments.sources,
        grace=timedelta(seconds=runtime.settings.experiment_exposure_grace_seconds),
        cache=runtime.completions.cache,
        usage=runtime.completions.recorder,
        exposures=runtime.experiments.exposures,
    )


def provide_exposure_service(runtime: NamedDependency[Runtime]) -> ExposureService:
    return ExposureService(runtime.experiments.router, runtime.experiments.exposures)


def provide_key(key: FromPath[str]) -> str:
    return key.replace(ENCODED_SLASH, "/")


def provide_unit(unit: FromPath[str]) -> str:
    return unit.replace(ENCODED_SLASH, "/")


def provide_may_promote(request: Request[Principal, Any, Any]) -> bool:
    return grants(request.user.scopes, Scope.PROMOTE)


class MetricController(Controller):
    path = "/metrics"
    tags = ["experiments"]
    dependencies = {"service": Provide(provide_metric_service, sync_to_thread=False)}

    @post("/", opt={"scope": Scope.WRITE}, operation_id="createMetric", summary="Define a metric")
    async def create_metric(
        self,
        data: JSONBody[CreateMetric],
        service: NamedDependency[MetricService],
        current_actor: NamedDependency[Actor],
    ) -> MetricOut:
        return MetricOut.of(await service.create(data, current_actor))

    @get("/", opt={"scope": Scope.READ}, operation_id="listMetrics", summary="List metrics")
    async def list_metrics(
        self, service: NamedDependency[MetricService], page: NamedDependency[PageRequest]
    ) -> MetricPage:
        items, cursor = paginate(await service.list_metrics(page), page.limit, lambda m: encode_cursor(m.key))
        return MetricPage(items=[MetricOut.of(m) for m in items], next_cursor=cursor)

    @get("/{key:str}", opt={"scope": Scope.READ}, operation_id="getMetric", summary="Get a metric")
    async def get_metric(self, key: FromPath[str], service: NamedDependency[MetricService]) -> MetricOut:
        return MetricOut.of(await service.require(key))

    @patch(
        "/{key:str}", opt={"scope": Scope.WRITE}, operation_id="updateMetric", summary="Update a metric's description"
    )
    async def update_metric(
        self,
        key: FromPath[str],
        data: JSONBody[UpdateMetric],
        service: NamedDependency[MetricService],
        current_actor: NamedDependency[Actor],
    ) -> MetricOut:
        return MetricOut.of(await service.update(key, data, current_actor))


class ExperimentController(Controller):
    path = "/experiments"
    tags = ["experiments"]
    dependencies = {
        "service": Provide(provide_experiment_service, sync_to_thread=False),
        "analysis": Provide(provide_analysis_service, sync_to_thread=False),
        "experiment_key": Provide(provide_key, sync_to_thread=False),
        "may_promote": Provide(provide_may_promote, sync_to_thread=False),
    }

    @post("/", opt={"scope": Scope.WRITE}, operation_id="createExperiment", summary="Create an experiment (a draft)")
    async def create_experiment(
        self,
        data: JSONBody[CreateExperiment],
        service: NamedDependency[ExperimentService],
        current_actor: NamedDependency[Actor],
    ) -> ExperimentDefinition:
        return ExperimentDefinition.of(await service.create(data, current_actor))

    @get("/", opt={"scope": Scope.READ}, operation_id="listExperiments", summary="List experiments")
    async def list_experiments(
        self,
        service: NamedDependency[ExperimentService],
        page: NamedDependency[PageRequest],
        status: Annotated[Status | None, QueryParameter(description="Only experiments in this status.")] = None,
        prompt: Annotated[
            str | None, QueryParameter(max_length=128, description="Only experiments on this prompt.")
        ] = None,
    ) -> ExperimentPage:
        rows = await service.list_experiments(page, status=status, prompt=prompt)
        items, cursor = paginate(rows, page.limit, lambda e: encode_cursor(e.key))
        return ExperimentPage(items=[ExperimentDefinition.of(e) for e in items], next_cursor=cursor)

    @get(
        "/{key:str}",
        opt={"scope": Scope.READ},
        operation_id="getExperiment",
        summary="Get an experiment",
        description="`assignment` is the experiment as GrowthBook SDKs take it, for assigning units in the app.",
    )
    async def get_experiment(
        self, experiment_key: NamedDependency[str], service: NamedDependency[ExperimentService]
    ) -> ExperimentDefinition:
        return ExperimentDefinition.of(await service.require(experiment_key))

    @patch(
        "/{key:str}",
        opt={"scope": Scope.WRITE},
        operation_id="updateExperiment",
        summary="Change an experiment",
        description="On a running experiment, new weights, seed or namespace, or a lower coverage, start a new "
        "phase; a higher coverage keeps it. On a running experiment, a change of what units get (weights, "
        "coverage, seed, namespace, forced variants) also needs `promote` (403 otherwise); drafts route no one.",
    )
    async def update_experiment(
        self,
        experiment_key: NamedDependency[str],
        data: JSONBody[UpdateExperiment],
        service: NamedDependency[ExperimentService],
        current_actor: NamedDependency[Actor],
        may_promote: NamedDependency[bool],
    ) -> ExperimentDefinition:
        experiment = await service.update(experiment_key, data, current_actor, may_change_routing=may_promote)
        return ExperimentDefinition.of(experiment)

    @post(
        "/{key:str}/preview",
        opt={"scope": Scope.READ},
        operation_id="previewExperiment",
        summary="Render the prompt as the experiment would for a unit (drafts included)",
        description="The unit's forced variant, else the variant its hash picks (outside the coverage or "
        "namespace: the production version), rendered with the variant's version and config. Production "
        "renders never route through a draft; this is how QA sees one. Nothing is recorded. `read` suffices: "
        "such a key may already render any version by number.",
        status_code=200,
    )
    async def preview_experiment(
        self,
        experiment_key: NamedDependency[str],
        data: JSONBody[PreviewRequest],
        service: NamedDependency[ExperimentService],
        runtime: NamedDependency[Runtime],
    ) -> RenderOut:
        return await service.preview(experiment_key, data, runtime.prompts)

    @post(
        "/{key:str}/start",
        opt={"scope": Scope.PROMOTE},
        operation_id="startExperiment",
        summary="Start routing units (phase 1)",
        status_code=200,
    )
    async def start_experiment(
        self,
        experiment_key: NamedDependency[str],
        service: NamedDependency[ExperimentService],
        current_actor: NamedDependency[Actor],
    ) -> ExperimentDefinition:
        return ExperimentDefinition.of(await service.start(experiment_key, current_actor))

    @post(
        "/{key:str}/stop",
        opt={"scope": Scope.PROMOTE},
        operation_id="stopExperiment",
        summary="Stop; with a winner, promote its version to production",
        status_code=200,
    )
    async def stop_experiment(
        self,
        experiment_key: NamedDependency[str],
        data: JSONBody[StopExperiment],
        service: NamedDependency[ExperimentService],
        current_actor: NamedDependency[Actor],
    ) -> StopOut:
        experiment, promoted = await service.stop(experiment_key, data, current_actor)
        return StopOut(experiment=ExperimentDefinition.of(experiment), promoted=promoted)

    @get(
        "/{key:str}/results",
        opt={"scope": Scope.ANALYZE},
        operation_id="experimentResults",
        summary="Results of a phase (default: the current one)",
    )
    async def results(
        self,
        experiment_key: NamedDependency[str],
        analysis: NamedDependency[ExperimentService],
        phase: Annotated[int | None, QueryParameter(ge=1)] = None,
    ) -> ResultsOut:
        return await analysis.results(experiment_key, phase)

    @get(
        "/{key:str}/results/timeseries",
        opt={"scope": Scope.ANALYZE},
        operation_id="experimentTimeseries",
        summary="Units and the primary metric per variant over time (default: the current phase)",
        description="Cumulative by the hour or day (UTC) of each unit's first exposure, with each unit's metric "
        "value as it stands now, so a variant's last point is its units and mean in the results. Without "
        "`interval`, a phase shorter than three days is given by the hour, a longer one by the day.",
    )
    async def timeseries(
        self,
        experiment_key: NamedDependency[str],
        analysis: NamedDependency[ExperimentService],
        phase: Annotated[int | None, QueryParameter(ge=1)] = None,
        interval: Annotated[Interval | None, QueryParameter(description="hour or day")] = None,
    ) -> TimeseriesOut:
        return await analysis.timeseries(experiment_key, phase, interval)

    @get(
        "/{key:str}/export",
        opt={"scope": Scope.ANALYZE},
        operation_id="exportExperimentUnits",
        summary="Per-unit rows of a phase as CSV or Parquet, streamed",
    )
    async def export(
        self,
        experiment_key: NamedDependency[str],
        analysis: NamedDependency[ExperimentService],
        runtime: NamedDependency[Runtime],
        export_format: Annotated[ExportFormat, QueryParameter(name="format")] = "csv",
        phase: Annotated[int | None, QueryParameter(ge=1)] = None,
        exposed_from: Annotated[datetime | None, QueryParameter(description="First exposure at or after.")] = None,
        exposed_to: Annotated[datetime | None, QueryParameter(description="First exposure before.")] = None,
    ) -> Stream:
        plan = await analysis.export_plan(
            experiment_key, phase=phase, exposed_from=exposed_from, exposed_to=exposed_to, format=export_format
        )
        return Stream(
            ExportService(runtime.read_sessionmaker).stream(plan),
            media_type=plan.media_type,
            headers={"Content-Disposition": f'attachment; filename="{plan.filename}"'},
        )


class EventController(Controller):
    path = "/events"
    tags = ["experiments"]
    dependencies = {"service": Provide(provide_event_service, sync_to_thread=False)}

    @post(
        "/",
        opt={"scope": Scope.READ},
        operation_id="recordEvents",
        summary="Record outcome events (up to 1000)",
        description="Each event is accepted, a duplicate (its idempotency key was seen before: ignored) or "
        "rejected with its errors; the others are kept. 200 when none is rejected, 207 otherwise.\n\n"
        "While the database is unreachable, events that pass the checks needing no database are held in memory "
        "(up to `REGISTRY_EXPERIMENT_EVENT_BUFFER_SIZE`) and answered 202 with status `buffered`; they are "
        "written when the database returns, with the same checks and idempotency-key deduplication, or discarded "
        "then if their metric or experiment does not exist. A batch that does not fit gets 503 `database_unavailable` "
        "(send it again). Held events are lost if the process is killed before the database returns.",
        status_code=200,
        responses={
            202: ResponseSpec(EventBatchOut, description="The database is unreachable; the events are held in memory."),
            207: ResponseSpec(EventBatchOut, description="Some events were rejected; each lists its errors."),
        },
    )
    async def record_events(
        self, data: JSONBody[EventBatch], service: NamedDependency[EventService]
    ) -> Response[EventBatchOut]:
        result = await service.record(data)
        return Response(result, status_code=202 if result.buffered else 207 if result.rejected else 200)


class ExposureController(Controller):
    path = "/exposures"
    tags = ["experiments"]
    dependencies = {"service": Provide(provide_exposure_service, sync_to_thread=False)}

    @post(
        "/",
        opt={"scope": Scope.READ},
        operation_id="recordExposures",
        summary="Record exposures of units an app assigned itself",
        description="For apps that assign with a GrowthBook SDK or the client's `assignment` module. "
        "Buffered like the service's own exposures.",
        status_code=202,
    )
    async def record_exposures(
        self, data: JSONBody[ExposureBatch], service: NamedDependency[ExposureService]
    ) -> ExposureBatchOut:
        return service.record(data)


class UnitController(Controller):
    path = "/units"
    tags = ["experiments"]
    dependencies = {
        "service": Provide(provide_unit_service, sync_to_thread=False),
        "unit_id": Provide(provide_unit, sync_to_thread=False),
    }

    @get("/{unit:str}", opt={"scope": Scope.ANALYZE}, operation_id="getUnitData", summary="All data held on a unit")
    async def get_unit(
        self,
        unit_id: NamedDependency[str],
        service: NamedDependency[UnitDataService],
        runtime: NamedDependency[Runtime],
    ) -> UnitDataOut:
        exposures = runtime.experiments.exposures
        async with exposures.writes_held():
            return await service.describe(unit_id, pending_exposures=exposures.pending_for_unit(unit_id))

    @delete(
        "/{unit:str}",
        opt={"scope": Scope.ADMIN},
        operation_id="eraseUnitData",
        summary="Erase a unit's exposures and events everywhere",
        description="Also takes the unit out of every experiment's statistics, clears the unit and the stored texts "
        "of its completions (their usage stays counted) and deletes the cached answers of its requests. Audited (by "
        "a digest of the unit id).",
        status_code=200,
    )
    async def erase_unit(
        self,
        unit_id: NamedDependency[str],
        service: NamedDependency[UnitDataService],
        current_actor: NamedDependency[Actor],
    ) -> UnitErasedOut:
        return await service.erase(unit_id, current_actor)
