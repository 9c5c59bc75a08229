"""Evaluation pages: runs and their results, the start form, cancel, comparisons, datasets and downloads.

Scopes as on the API: ``read`` lists and reads runs, comparisons and datasets, ``write`` starts and
cancels runs. The router's ``before_request`` hook (``registry.console.controller.admit_viewer``)
checks the scope and the CSRF token first, so a control a page hides is refused as well.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream, Template
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.access import SCOPE_OPT
from registry.auth.keys import Scope
from registry.console.controller import CONSOLE_PREFIX, SECURITY_HEADERS, Form, provide_viewer, render, see_other
from registry.console.evals import (
    COMMON_SCORERS,
    RUN_REFRESH_MS,
    RUN_STATUSES,
    SCORER_LABELS,
    CompareView,
    EvalPages,
    RunForm,
    RunStatus,
)
from registry.console.sessions import Viewer
from registry.deps import provide_resource_name
from registry.evals.export import stream_export
from registry.lib.pagination import PageRequest
from registry.runtime import Runtime

EVALS = f"{CONSOLE_PREFIX}/evals"
VersionNumber = Annotated[int, QueryParameter(ge=1, le=2_147_483_647)]


class CancelForm(msgspec.Struct, kw_only=True):
    csrf: str = ""


def run_path(run_id: int) -> str:
    return f"{EVALS}/runs/{run_id}"


def dataset_path(name: str) -> str:
    return f"{EVALS}/datasets/{quote(name, safe='')}"


def provide_eval_pages(db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]) -> EvalPages:
    return EvalPages(db_session, runtime.prompt_limits)


def provide_eval_reader(read_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]) -> EvalPages:
    """On the read replica, as the API's reads; a page using it takes no other session."""
    return EvalPages(read_session, runtime.prompt_limits)


class EvalPagesController(Controller):
    path = EVALS
    dependencies = {
        "viewer": Provide(provide_viewer, sync_to_thread=False),
        "pages": Provide(provide_eval_pages, sync_to_thread=False),
        "reader": Provide(provide_eval_reader, sync_to_thread=False),
        "resource_name": Provide(provide_resource_name, sync_to_thread=False),
    }

    @get("/", opt={SCOPE_OPT: Scope.READ}, operation_id="consoleEvalRuns", include_in_schema=False)
    async def run_list(
        self,
        request: Request[Any, Any, Any],
        reader: NamedDependency[EvalPages],
        page: NamedDependency[PageRequest],
        prompt: Annotated[str, QueryParameter(max_length=128)] = "",
        status: Annotated[RunStatus, QueryParameter()] = "",
    ) -> Template:
        listing = await reader.list_runs(page, prompt=prompt.strip(), status=status)
        return render(request, "evals.html", listing=listing, statuses=RUN_STATUSES, section="evals")

    @get("/runs/{run_id:int}", opt={SCOPE_OPT: Scope.READ}, operation_id="consoleEvalRun", include_in_schema=False)
    async def run_page(
        self,
        request: Request[Any, Any, Any],
        run_id: FromPath[int],
        reader: NamedDependency[EvalPages],
        page: NamedDependency[PageRequest],
        failed: Annotated[bool, QueryParameter()] = False,
        notice: Annotated[bool, QueryParameter(name="cancelled")] = False,
    ) -> Template:
        view = await reader.run_page(run_id, page, failed=failed)
        return render(
            request,
            "eval-run.html",
            view=view,
            notice="The run is cancelled." if notice else None,
            refresh_ms=RUN_REFRESH_MS,
            section="evals",
        )

    @get(
        "/runs/{run_id:int}/live",
        opt={SCOPE_OPT: Scope.READ},
        operation_id="consoleEvalRunLive",
        include_in_schema=False,
    )
    async def run_live(
        self,
        request: Request[Any, Any, Any],
        run_id: FromPath[int],
        reader: NamedDependency[EvalPages],
        page: NamedDependency[PageRequest],
        failed: Annotated[bool, QueryParameter()] = False,
    ) -> Template:
        """The run page's moving parts alone (same query as the page), for ``static/live.js`` while it runs."""
        view = await reader.run_page(run_id, page, failed=failed)
        return render(request, "eval-run-live.html", view=view)

    @post(
        "/runs/{run_id:int}/cancel",
        opt={SCOPE_OPT: Scope.WRITE},
        operation_id="consoleEvalCancel",
        include_in_schema=False,
    )
    async def cancel(
        self,
        run_id: FromPath[int],
        data: Annotated[CancelForm, Form],
        pages: NamedDependency[EvalPages],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        await pages.cancel(run_id, viewer.actor)
        return see_other(f"{run_path(run_id)}?cancelled=true")

    # -- start a run

    def _form(self, request: Request[Any, Any, Any], form: RunForm) -> Template:
        return render(
            request,
            "eval-new.html",
            status_code=422 if form.errors else 200,
            form=form,
            scorer_choices=[(key, SCORER_LABELS[key]) for key in COMMON_SCORERS],
            section="evals",
        )

    @get("/new", opt={SCOPE_OPT: Scope.WRITE}, operation_id="consoleNewEvalRun", include_in_schema=False)
    async def new_run(
        self,
        request: Request[Any, Any, Any],
        prompt: Annotated[str, QueryParameter(max_length=128)] = "",
        version: Annotated[int | None, QueryParameter(ge=1, le=2_147_483_647)] = None,
        dataset: Annotated[str, QueryParameter(max_length=128)] = "",
        config: Annotated[str, QueryParameter(max_length=128)] = "",
        config_version: Annotated[int | None, QueryParameter(ge=1, le=2_147_483_647)] = None,
    ) -> Template:
        form = RunForm(
            prompt=prompt,
            version=str(version or ""),
            config=config,
            config_version=str(config_version or ""),
            dataset=dataset,
        )
        return self._form(request, form)

    @post("/new", opt={SCOPE_OPT: Scope.WRITE}, operation_id="consoleStartEvalRun", include_in_schema=False)
    async def start_run(
        self,
        request: Request[Any, Any, Any],
        pages: NamedDependency[EvalPages],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        sent = await request.form()
        started = await pages.start(RunForm.sent(sent, sent.getall("common", [])), viewer.actor)
        if isinstance(started, RunForm):
            return self._form(request, started)
        return see_other(run_path(started))

    # -- compare

    @get("/compare", opt={SCOPE_OPT: Scope.READ}, operation_id="consoleEvalCompare", include_in_schema=False)
    async def compare(
        self,
        request: Request[Any, Any, Any],
        reader: NamedDependency[EvalPages],
        page: NamedDependency[PageRequest],
        base: Annotated[str, QueryParameter(max_length=64)],
        candidate: Annotated[int, QueryParameter(ge=1, le=2_147_483_647)],
    ) -> Template:
        """The comparison; a run to compare with that is no run, or none comparable, is said at the candidate's
        "Compare with run" field, on its page, as typed (422)."""
        compared = await reader.compare_typed(base, candidate, page)
        if isinstance(compared, CompareView):
            return render(request, "eval-compare.html", view=compared, section="evals")
        return render(
            request,
            "eval-run.html",
            status_code=422,
            view=compared.run,
            notice=None,
            refresh_ms=RUN_REFRESH_MS,
            compare_base=compared.typed,
            compare_error=compared.problem,
            section="evals",
        )

    # -- datasets

    @get("/datasets", opt={SCOPE_OPT: Scope.READ}, operation_id="consoleEvalDatasets", include_in_schema=False)
    async def dataset_list(
        self,
        request: Request[Any, Any, Any],
        reader: NamedDependency[EvalPages],
        page: NamedDependency[PageRequest],
        prefix: Annotated[str, QueryParameter(name="q", max_length=128)] = "",
    ) -> Template:
        listing = await reader.list_datasets(page, prefix=prefix.strip())
        return render(request, "eval-datasets.html", listing=listing, section="evals")

    @get(
        "/datasets/{name:str}", opt={SCOPE_OPT: Scope.READ}, operation_id="consoleEvalDataset", include_in_schema=False
    )
    async def dataset_page(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        reader: NamedDependency[EvalPages],
        page: NamedDependency[PageRequest],
    ) -> Template:
        view = await reader.dataset_page(resource_name, page)
        return render(request, "eval-dataset.html", view=view, section="evals")

    @get(
        "/datasets/{name:str}/versions/{version:int}",
        opt={SCOPE_OPT: Scope.READ},
        operation_id="consoleEvalDatasetVersion",
        include_in_schema=False,
    )
    async def dataset_version_page(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        version: FromPath[int],
        reader: NamedDependency[EvalPages],
        page: NamedDependency[PageRequest],
    ) -> Template:
        view = await reader.dataset_version_page(resource_name, version, page)
        return render(request, "eval-dataset-version.html", view=view, section="evals")

    @get(
        "/datasets/{name:str}/versions/{version:int}/export",
        opt={SCOPE_OPT: Scope.READ},
        operation_id="consoleEvalDatasetExport",
        include_in_schema=False,
    )
    async def export(
        self,
        resource_name: NamedDependency[str],
        version: FromPath[int],
        reader: NamedDependency[EvalPages],
        runtime: NamedDependency[Runtime],
        export_format: Annotated[str, QueryParameter(name="format", pattern="^(jsonl|csv)$")] = "jsonl",
    ) -> Stream:
        """The API's export (``GET /v1/evals/datasets/{name}/versions/{version}/export``), through the session."""
        datasets = reader.datasets
        row = await datasets.get_version(resource_name, version)
        names = await datasets.variable_names(row) if export_format == "csv" else []
        filename = f"{resource_name.replace('/', '_')}-v{row.number}.{export_format}"
        return Stream(
            stream_export(
                runtime.read_sessionmaker, runtime.sessionmaker, row.id, row.item_count, export_format, names
            ),
            media_type="text/csv" if export_format == "csv" else "application/x-ndjson",
            headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'},
        )


__all__ = ["EvalPagesController", "dataset_path", "run_path"]
