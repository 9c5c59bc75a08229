"""The evaluations API: datasets, runs, their results and progress, comparisons."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.deps import provide_resource_name
from registry.evals.events import run_events
from registry.evals.export import stream_export
from registry.evals.formats import parse_csv, parse_jsonl
from registry.evals.gates import GateService
from registry.evals.schemas import (
    ComparisonOut,
    CreateDataset,
    CreateDatasetVersion,
    CreateRun,
    DatasetItemOut,
    DatasetItemPage,
    DatasetOut,
    DatasetPage,
    DatasetVersionOut,
    DatasetVersionPage,
    GateOut,
    RunItemOut,
    RunItemPage,
    RunOut,
    RunPage,
    SetGate,
)
from registry.evals.service import DatasetService, RunService
from registry.lib.errors import FieldError, InvalidInputError, UnsupportedMediaTypeError, field_error
from registry.lib.http import json_error_detail
from registry.lib.pagination import PageRequest, encode_cursor
from registry.lib.schema import paginate
from registry.runtime import Runtime

# A dataset version of 100,000 items is larger than the API's usual body limit.
DATASET_MAX_BODY_BYTES = 256 * 1024 * 1024
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_VERSION_NUMBER = 2_147_483_647  # the versions' INTEGER column


def provide_dataset_service(db_session: NamedDependency[AsyncSession]) -> DatasetService:
    return DatasetService(db_session)


def provide_run_service(db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]) -> RunService:
    return RunService(db_session, runtime.prompt_limits)


def version_number(ref: str) -> int | None:
    """``latest`` is None; otherwise a positive version number (one the database can hold)."""
    if ref == "latest":
        return None
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), and few enough for int() to read at all.
    digits = ref.isascii() and ref.isdigit() and len(ref) <= len(str(MAX_VERSION_NUMBER))
    if not digits or not 1 <= int(ref) <= MAX_VERSION_NUMBER:
        raise InvalidInputError(
            f"'{ref[:40]}' is not a version: give a number from 1 to {MAX_VERSION_NUMBER} or latest",
            errors=[FieldError("version", "not a version")],
        )
    return int(ref)


def decode_body(raw: bytes, content_type: str, commit_message: str) -> CreateDatasetVersion:
    media = content_type.split(";")[0].strip().lower()
    if media in ("application/json", ""):
        try:
            return msgspec.json.decode(raw, type=CreateDatasetVersion)
        except msgspec.ValidationError as exc:  # a field of the version or of an item: named, as any body's are
            raise InvalidInputError(
                f"the body is not a dataset version: {exc}", errors=[field_error(exc, whole="body")]
            ) from exc
        except msgspec.DecodeError as exc:
            raise InvalidInputError(f"the body is not a dataset version: {exc}") from exc
        except (RecursionError, UnicodeDecodeError) as exc:  # msgspec's, outside its DecodeError
            raise InvalidInputError(json_error_detail(exc)) from exc
    if media in ("application/x-ndjson", "application/jsonl", "application/jsonlines"):
        items = parse_jsonl(raw)
    elif media == "text/csv":
        items = parse_csv(raw)
    else:
        raise UnsupportedMediaTypeError(
            f"'{media}' is not a dataset format: send application/json, application/x-ndjson or text/csv"
        )
    try:
        return msgspec.convert({"items": items, "commit_message": commit_message}, CreateDatasetVersion)
    except msgspec.ValidationError as exc:
        raise InvalidInputError(f"the dataset is invalid: {exc}", errors=[field_error(exc, whole="items")]) from exc


class DatasetController(Controller):
    path = "/evals/datasets"
    tags = ["evals"]
    dependencies = {
        "service": Provide(provide_dataset_service, sync_to_thread=False),
        "resource_name": Provide(provide_resource_name, sync_to_thread=False),
    }

    @post(
        "/",
        opt={"scope": Scope.WRITE},
        operation_id="createEvalDataset",
        summary="Create a dataset",
        description="Creates an empty dataset; add items with `createEvalDatasetVersion`. 409 if the name is taken.",
    )
    async def create_dataset(
        self,
        data: JSONBody[CreateDataset],
        service: NamedDependency[DatasetService],
        current_actor: NamedDependency[Actor],
    ) -> DatasetOut:
        return DatasetOut.of(await service.create_dataset(data, current_actor))

    @get(
        "/",
        opt={"scope": Scope.READ},
        operation_id="listEvalDatasets",
        summary="List datasets",
        description="Datasets by name; `prefix` filters a folder. Paged: pass `next_cursor` as `cursor`.",
    )
    async def list_datasets(
        self,
        service: NamedDependency[DatasetService],
        page: NamedDependency[PageRequest],
        prefix: Annotated[str | None, QueryParameter(max_length=128)] = None,
    ) -> DatasetPage:
        rows = await service.list_datasets(page, prefix=prefix)
        items, cursor = paginate(rows, page.limit, lambda d: encode_cursor(d.name))
        return DatasetPage(items=[DatasetOut.of(d) for d in items], next_cursor=cursor)

    @get(
        "/{name:str}",
        opt={"scope": Scope.READ},
        operation_id="getEvalDataset",
        summary="Get a dataset",
        description="The dataset and its latest version number.",
    )
    async def get_dataset(
        self, resource_name: NamedDependency[str], service: NamedDependency[DatasetService]
    ) -> DatasetOut:
        return DatasetOut.of(await service.require(resource_name))

    @post(
        "/{name:str}/versions",
        opt={"scope": Scope.WRITE},
        operation_id="createEvalDatasetVersion",
        summary="Create a version from JSON, JSONL or CSV (201), or get the newest if identical (200)",
        description='The body is `application/json` (`{"items": [...], "commit_message": ...}`), '
        "`application/x-ndjson` (one item per line) or `text/csv` (columns `expected`, `tags`, `metadata` and "
        "`var.NAME` or `json.NAME`; without those, every other column is a variable); for the last two "
        "`commit_message` is a query parameter. An item is `{variables, expected, tags, metadata}`; at most "
        "100,000 per version. Versions are immutable and numbered from 1; the same items as the newest version "
        "create nothing and answer 200 with it.",
        request_max_body_size=DATASET_MAX_BODY_BYTES,
    )
    async def create_version(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        service: NamedDependency[DatasetService],
        current_actor: NamedDependency[Actor],
        commit_message: Annotated[str, QueryParameter(max_length=1000)] = "",
    ) -> Response[DatasetVersionOut]:
        data = decode_body(await request.body(), request.headers.get("content-type", ""), commit_message)
        version, created = await service.create_version(resource_name, data.items, data.commit_message, current_actor)
        return Response(DatasetVersionOut.of(resource_name, version), status_code=201 if created else 200)

    @get(
        "/{name:str}/versions",
        opt={"scope": Scope.READ},
        operation_id="listEvalDatasetVersions",
        summary="List versions",
        description="Versions newest first, with item counts and digests. Paged: pass `next_cursor` as `cursor`.",
    )
    async def list_versions(
        self,
        resource_name: NamedDependency[str],
        service: NamedDependency[DatasetService],
        page: NamedDependency[PageRequest],
    ) -> DatasetVersionPage:
        rows = await service.list_versions(resource_name, page)
        items, cursor = paginate(rows, page.limit, lambda v: encode_cursor(v.number))
        return DatasetVersionPage(items=[DatasetVersionOut.of(resource_name, v) for v in items], next_cursor=cursor)

    @get(
        "/{name:str}/versions/{version:str}",
        opt={"scope": Scope.READ},
        operation_id="getEvalDatasetVersion",
        summary="Get a version",
        description="`version` is a number or `latest`.",
    )
    async def get_version(
        self, resource_name: NamedDependency[str], version: FromPath[str], service: NamedDependency[DatasetService]
    ) -> DatasetVersionOut:
        return DatasetVersionOut.of(resource_name, await service.get_version(resource_name, version_number(version)))

    @get(
        "/{name:str}/versions/{version:str}/items",
        opt={"scope": Scope.READ},
        operation_id="listEvalDatasetItems",
        summary="List a version's items",
        description="Items in order. Paged: pass `next_cursor` as `cursor`.",
    )
    async def list_items(
        self,
        resource_name: NamedDependency[str],
        version: FromPath[str],
        service: NamedDependency[DatasetService],
        page: NamedDependency[PageRequest],
    ) -> DatasetItemPage:
        row = await service.get_version(resource_name, version_number(version))
        rows = await service.items(row, page)
        items, cursor = paginate(rows, page.limit, lambda i: encode_cursor(i.position))
        return DatasetItemPage(items=[DatasetItemOut.of(i) for i in items], next_cursor=cursor)

    @get(
        "/{name:str}/versions/{version:str}/export",
        opt={"scope": Scope.READ},
        operation_id="exportEvalDatasetVersion",
        summary="Export a version as JSONL or CSV, streamed",
        description="`format=jsonl` (default) or `csv`; what either gives back can be uploaded as a new version. "
        "The CSV has a `json.NAME` column per variable, so values keep their types.",
    )
    async def export(
        self,
        resource_name: NamedDependency[str],
        version: FromPath[str],
        service: NamedDependency[DatasetService],
        runtime: NamedDependency[Runtime],
        export_format: Annotated[Literal["jsonl", "csv"], QueryParameter(name="format")] = "jsonl",
    ) -> Stream:
        row = await service.get_version(resource_name, version_number(version))
        names = await service.variable_names(row) if export_format == "csv" else []
        filename = f"{resource_name.replace('/', '_')}-v{row.number}.{export_format}"
        return Stream(
            stream_export(
                runtime.read_sessionmaker, runtime.sessionmaker, row.id, row.item_count, export_format, names
            ),
            media_type="text/csv" if export_format == "csv" else "application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )


class RunController(Controller):
    path = "/evals"
    tags = ["evals"]
    dependencies = {"service": Provide(provide_run_service, sync_to_thread=False)}

    @post(
        "/runs",
        opt={"scope": Scope.WRITE},
        operation_id="createEvalRun",
        summary="Start an evaluation run (202)",
        description="Evaluates prompt `version` with a config version on a dataset version (`dataset.version`, "
        "default the latest), scoring each item with `scorers` and passing it by `pass_rule`. The config is "
        "`config` (any config: `{name, version}` or `{name, label}`, the label resolved and pinned now), else "
        "`config_version` of the version's own config, else the version's own; a version that links no config "
        "needs `config` (422). The run records the config version it ran with; only a run with the version's own "
        "is evidence for its promotion gates, any run can be compared. A worker runs it in the background, at "
        "most `concurrency` completions at a time, through the same backend path as `completePrompt`; usage and "
        "cost are charged to the calling key.",
        status_code=202,
    )
    async def create_run(
        self, data: JSONBody[CreateRun], service: NamedDependency[RunService], current_actor: NamedDependency[Actor]
    ) -> RunOut:
        return RunOut.of(await service.create_run(data, current_actor))

    @post(
        "/runs/{run_id:int}/cancel",
        opt={"scope": Scope.WRITE},
        operation_id="cancelEvalRun",
        summary="Cancel a run",
        description="A queued or running run ends as `cancelled`; the items scored so far stay. Its worker "
        "stops at its next write. A finished run is returned unchanged.",
        status_code=200,
    )
    async def cancel_run(
        self, run_id: FromPath[int], service: NamedDependency[RunService], current_actor: NamedDependency[Actor]
    ) -> RunOut:
        return RunOut.of(await service.cancel(run_id, current_actor))

    @get(
        "/runs",
        opt={"scope": Scope.READ},
        operation_id="listEvalRuns",
        summary="List runs",
        description="Runs newest first; `prompt` keeps one prompt's. Paged: pass `next_cursor` as `cursor`.",
    )
    async def list_runs(
        self,
        service: NamedDependency[RunService],
        page: NamedDependency[PageRequest],
        prompt: Annotated[str | None, QueryParameter(max_length=128)] = None,
    ) -> RunPage:
        rows = await service.list_runs(page, prompt=prompt)
        items, cursor = paginate(rows, page.limit, lambda r: encode_cursor(r.id))
        return RunPage(items=[RunOut.of(r) for r in items], next_cursor=cursor)

    @get(
        "/runs/{run_id:int}",
        opt={"scope": Scope.READ},
        operation_id="getEvalRun",
        summary="A run's status, progress and results",
        description="Items done of the total, pass rate and cost so far, and the pass rate and mean score with "
        "95% intervals (Wilson and t) over the items done.",
    )
    async def get_run(self, run_id: FromPath[int], service: NamedDependency[RunService]) -> RunOut:
        return (await service.results(run_id)).run

    @get(
        "/runs/{run_id:int}/items",
        opt={"scope": Scope.READ},
        operation_id="listEvalRunItems",
        summary="A run's items: output, scores with reasons, latency, tokens, cost",
        description="In dataset order; `failed=true` keeps the items that did not pass. Paged: pass "
        "`next_cursor` as `cursor`.",
    )
    async def list_items(
        self,
        run_id: FromPath[int],
        service: NamedDependency[RunService],
        page: NamedDependency[PageRequest],
        failed: Annotated[bool, QueryParameter(description="Only items that did not pass.")] = False,
    ) -> RunItemPage:
        rows = await service.items(run_id, page, failed_only=failed)
        items, cursor = paginate(rows, page.limit, lambda i: encode_cursor(i.position))
        return RunItemPage(items=[RunItemOut.of(i) for i in items], next_cursor=cursor)

    @get(
        "/runs/{run_id:int}/events",
        opt={"scope": Scope.READ},
        operation_id="evalRunEvents",
        summary="A run's progress as server-sent events",
        description="`progress` events (items done, passed, pass rate and cost so far) as the run advances, then "
        "one `done` event with the whole run when it has finished.",
    )
    async def events(
        self, run_id: FromPath[int], service: NamedDependency[RunService], runtime: NamedDependency[Runtime]
    ) -> Stream:
        await service.require(run_id)  # a 404 before the stream starts
        return Stream(
            run_events(
                runtime.read_sessionmaker,
                runtime.sessionmaker,
                runtime.prompt_limits,
                run_id,
                runtime.settings.eval_poll_seconds,
            ),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    @get(
        "/compare",
        opt={"scope": Scope.READ},
        operation_id="compareEvalRuns",
        summary="Compare two runs item by item",
        description="Pairs the items of `base` and `candidate` (runs on the same dataset version): McNemar's test "
        "on pass and fail, a paired t test on the scores, and the items whose outcome changed.",
    )
    async def compare(
        self,
        service: NamedDependency[RunService],
        base: Annotated[int, QueryParameter(ge=1)],
        candidate: Annotated[int, QueryParameter(ge=1)],
    ) -> ComparisonOut:
        paired, comparison = await service.compare(base, candidate)
        return ComparisonOut(base=base, candidate=candidate, paired_items=paired, comparison=comparison)


def provide_gate_service(db_session: NamedDependency[AsyncSession]) -> GateService:
    return GateService(db_session)


class GateController(Controller):
    path = "/prompts"
    tags = ["evals"]
    dependencies = {
        "service": Provide(provide_gate_service, sync_to_thread=False),
        "resource_name": Provide(provide_resource_name, sync_to_thread=False),
    }

    @put(
        "/{name:str}/gates/{target_state:str}",
        opt={"scope": Scope.ADMIN},
        operation_id="setPromptGate",
        summary="Gate a state on evaluation evidence",
        description="From now on a version enters `target_state` (`staging` or `production`) only if a completed "
        "run of exactly that version and its config (any config for a version that links none) on `dataset` (a "
        "version, or its latest when the promotion is checked), scored with exactly `scorers` (in any order, "
        "with `pass_rule`, every scorer passing by default; a judge named without a version matches any of its "
        "versions, one named by label is pinned now; without `scorers`, a run scored any way counts), has at "
        "least `min_pass_rate` and, with `no_regression`, no significant regression (one-sided McNemar and "
        "paired t at `alpha`) against the run of the version holding that state on the same dataset version, "
        "scored exactly as the candidate's run was (with the same config version when either links no config). "
        "A bad scorer is a 422 naming `scorers[i].FIELD`. Otherwise the promotion is refused with 422 "
        "`gate_failed`, naming the evidence (and, when a run was scored otherwise, how it was scored); an "
        "admin may promote anyway with `override_gate` (a reason), kept in the history and the audit log.",
    )
    async def set_gate(
        self,
        resource_name: NamedDependency[str],
        target_state: FromPath[str],
        data: JSONBody[SetGate],
        service: NamedDependency[GateService],
        current_actor: NamedDependency[Actor],
    ) -> GateOut:
        return GateOut.of(resource_name, await service.put(resource_name, target_state, data, current_actor))

    @get(
        "/{name:str}/gates/{target_state:str}",
        opt={"scope": Scope.READ},
        operation_id="getPromptGate",
        summary="A state's gate",
        description="The gate on `target_state`; 404 `gate_not_found` when the state is not gated.",
    )
    async def get_gate(
        self, resource_name: NamedDependency[str], target_state: FromPath[str], service: NamedDependency[GateService]
    ) -> GateOut:
        return GateOut.of(resource_name, await service.get(resource_name, target_state))

    @delete(
        "/{name:str}/gates/{target_state:str}",
        opt={"scope": Scope.ADMIN},
        operation_id="removePromptGate",
        summary="Remove a state's gate",
        description="Versions enter `target_state` without evaluation evidence again. Audited.",
    )
    async def remove_gate(
        self,
        resource_name: NamedDependency[str],
        target_state: FromPath[str],
        service: NamedDependency[GateService],
        current_actor: NamedDependency[Actor],
    ) -> None:
        await service.delete(resource_name, target_state, current_actor)
