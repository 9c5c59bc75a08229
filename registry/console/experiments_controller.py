"""Experiment pages: the list, create and edit forms, start and stop confirmations, results and downloads.

Scopes as on the API: ``read`` lists, ``write`` creates and edits (and on a running experiment,
what changes the variant a unit gets also needs ``promote``, checked by the service), ``promote``
starts and stops, ``analyze`` reads results (and, while the experiment runs, their moving parts for the page's
live refresh) and downloads them. The router's ``before_request``
hook (``registry.console.controller.admit_viewer``) checks the scope and the CSRF token first.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream, Template
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.access import SCOPE_OPT
from registry.auth.keys import Scope
from registry.console.controller import (
    CONSOLE_PREFIX,
    SECURITY_HEADERS,
    Form,
    provide_console_experiments,
    provide_viewer,
    render,
    see_other,
)
from registry.console.experiments import ChangePage, ExperimentPages, results_refresh_ms
from registry.console.experiments_form import CORRECTIONS, MAX_VARIANTS, ExperimentForm, VariantRow
from registry.console.service import ConsoleExperiments
from registry.console.sessions import Viewer
from registry.experiments.export import ExportFormat, ExportService
from registry.experiments.schemas import StopExperiment
from registry.lib.http import decode_name
from registry.lib.pagination import PageRequest
from registry.lib.schema import Reason
from registry.runtime import Runtime

EXPERIMENTS = f"{CONSOLE_PREFIX}/experiments"
NOTICES = {
    "created": "The experiment is saved as a draft.",
    "saved": "The changes are saved.",
    "started": "The experiment is running.",
    "stopped": "The experiment is stopped.",
}


class StartForm(msgspec.Struct, kw_only=True):
    csrf: str = ""


class StopForm(msgspec.Struct, kw_only=True):
    csrf: str = ""
    winner: Annotated[str, msgspec.Meta(max_length=64)] = ""  # empty: no winner, production stays as it is
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""

    def request(self) -> StopExperiment:
        reason: Reason | None = self.reason.strip() or None
        return StopExperiment(winner=self.winner or None, reason=reason)


def more_rows(form: ExperimentForm) -> None:
    """ "More variant rows" (a submit button, so what was typed stays): one more empty row, up to the limit."""
    if len(form.rows) < MAX_VARIANTS:
        form.variants.append(VariantRow())


def experiment_path(key: str) -> str:
    return f"{EXPERIMENTS}/{quote(key, safe='')}"


def home_of(viewer: Viewer, key: str, notice: str) -> str:
    """Where an experiment is seen after a change: its results, or its form for a key that cannot read them."""
    query = urlencode({"notice": notice})
    if viewer.can(Scope.ANALYZE):
        return f"{experiment_path(key)}?{query}"
    if viewer.can(Scope.WRITE):
        return f"{experiment_path(key)}/edit?{query}"
    return f"{EXPERIMENTS}?{query}"


def provide_experiment_pages(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ExperimentPages:
    return ExperimentPages(db_session, runtime.prompt_limits)


def provide_experiment_results(
    read_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ExperimentPages:
    """On the read replica, as the API's results; the results page takes no other session."""
    return ExperimentPages(read_session, runtime.prompt_limits)


def provide_experiment_key(key: FromPath[str]) -> str:
    return decode_name(key)


Notice = Annotated[Literal["created", "saved", "started", "stopped", ""], QueryParameter()]


class ExperimentPagesController(Controller):
    path = EXPERIMENTS
    dependencies = {
        "viewer": Provide(provide_viewer, sync_to_thread=False),
        "pages": Provide(provide_experiment_pages, sync_to_thread=False),
        "analysis": Provide(provide_experiment_results, sync_to_thread=False),
        "listing": Provide(provide_console_experiments, sync_to_thread=False),
        "experiment_key": Provide(provide_experiment_key, sync_to_thread=False),
    }

    @get("/", opt={SCOPE_OPT: Scope.READ}, operation_id="consoleExperiments", include_in_schema=False)
    async def experiment_list(
        self,
        request: Request[Any, Any, Any],
        listing: NamedDependency[ConsoleExperiments],
        page: NamedDependency[PageRequest],
        status: Annotated[Literal["draft", "running", "stopped", ""], QueryParameter()] = "",
        notice: Notice = "",
    ) -> Template:
        found = await listing.list_experiments(page, status=status)
        return render(request, "experiments.html", listing=found, notice=NOTICES.get(notice), section="experiments")

    # -- create and edit

    def _form(self, request: Request[Any, Any, Any], page: Any, *, notice: str | None = None) -> Template:
        return render(
            request,
            "experiment-form.html",
            status_code=page.status_code if page.errors else 200,
            page=page,
            corrections=CORRECTIONS,
            max_variants=MAX_VARIANTS,
            notice=notice,
            section="experiments",
        )

    @get("/new", opt={SCOPE_OPT: Scope.WRITE}, operation_id="consoleNewExperiment", include_in_schema=False)
    async def new_experiment(
        self,
        request: Request[Any, Any, Any],
        pages: NamedDependency[ExperimentPages],
        prompt: Annotated[str, QueryParameter(max_length=128)] = "",
    ) -> Template:
        return self._form(request, await pages.new_form(ExperimentForm(prompt=prompt)))

    @post("/", opt={SCOPE_OPT: Scope.WRITE}, operation_id="consoleCreateExperiment", include_in_schema=False)
    async def create_experiment(
        self,
        request: Request[Any, Any, Any],
        pages: NamedDependency[ExperimentPages],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        form = ExperimentForm.sent(await request.form())
        if request.query_params.get("more") or request.query_params.get("filter"):
            if request.query_params.get("more"):
                more_rows(form)
            return self._form(request, await pages.new_form(form))
        refused = await pages.create(form, viewer.actor)
        if refused is not None:
            return self._form(request, refused)
        return see_other(home_of(viewer, form.key.strip(), "created"))

    @get("/{key:str}/edit", opt={SCOPE_OPT: Scope.WRITE}, operation_id="consoleEditExperiment", include_in_schema=False)
    async def edit_experiment(
        self,
        request: Request[Any, Any, Any],
        experiment_key: NamedDependency[str],
        pages: NamedDependency[ExperimentPages],
        notice: Notice = "",
    ) -> Template:
        return self._form(request, await pages.edit_form(experiment_key), notice=NOTICES.get(notice))

    @post(
        "/{key:str}/edit", opt={SCOPE_OPT: Scope.WRITE}, operation_id="consoleUpdateExperiment", include_in_schema=False
    )
    async def update_experiment(
        self,
        request: Request[Any, Any, Any],
        experiment_key: NamedDependency[str],
        pages: NamedDependency[ExperimentPages],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        sent = await request.form()
        form = ExperimentForm.sent(sent)
        if request.query_params.get("more") or request.query_params.get("filter"):
            if request.query_params.get("more"):
                more_rows(form)
            return self._form(request, await pages.edit_form(experiment_key, form))
        refused = await pages.update(
            experiment_key, form, sent, viewer.actor, may_change_routing=viewer.can(Scope.PROMOTE)
        )
        if refused is not None:
            return self._form(request, refused)
        return see_other(home_of(viewer, experiment_key, "saved"))

    # -- start and stop (confirmation pages, as promote is for prompts)

    @staticmethod
    def _change_page(
        request: Request[Any, Any, Any],
        action: Literal["start", "stop"],
        page: ChangePage,
        problem: str | None = None,
        sent: StopForm | None = None,
    ) -> Template:
        """The confirmation page; shown again with 409 and the service's reason when the change was refused, with
        the winner and reason that were sent (a winner no longer offered falls back to none)."""
        return render(
            request,
            "experiment-change.html",
            status_code=200 if problem is None else 409,
            action=action,
            e=page.experiment,
            cannot_win=page.cannot_win,
            production=page.production,
            problem=problem,
            sent=sent or StopForm(),
            section="experiments",
        )

    @get("/{key:str}/start", opt={SCOPE_OPT: Scope.PROMOTE}, operation_id="consoleStartPlan", include_in_schema=False)
    async def start_plan(
        self,
        request: Request[Any, Any, Any],
        experiment_key: NamedDependency[str],
        pages: NamedDependency[ExperimentPages],
    ) -> Template:
        return self._change_page(request, "start", await pages.start_page(experiment_key))

    @post("/{key:str}/start", opt={SCOPE_OPT: Scope.PROMOTE}, operation_id="consoleStart", include_in_schema=False)
    async def start(
        self,
        request: Request[Any, Any, Any],
        experiment_key: NamedDependency[str],
        data: Annotated[StartForm, Form],
        pages: NamedDependency[ExperimentPages],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        problem = await pages.start(experiment_key, viewer.actor)
        if problem is not None:
            return self._change_page(request, "start", await pages.start_page(experiment_key), problem)
        return see_other(home_of(viewer, experiment_key, "started"))

    @get("/{key:str}/stop", opt={SCOPE_OPT: Scope.PROMOTE}, operation_id="consoleStopPlan", include_in_schema=False)
    async def stop_plan(
        self,
        request: Request[Any, Any, Any],
        experiment_key: NamedDependency[str],
        pages: NamedDependency[ExperimentPages],
        viewer: NamedDependency[Viewer],
    ) -> Template:
        return self._change_page(request, "stop", await pages.stop_page(experiment_key, viewer.actor))

    @post("/{key:str}/stop", opt={SCOPE_OPT: Scope.PROMOTE}, operation_id="consoleStop", include_in_schema=False)
    async def stop(
        self,
        request: Request[Any, Any, Any],
        experiment_key: NamedDependency[str],
        data: Annotated[StopForm, Form],
        pages: NamedDependency[ExperimentPages],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        problem = await pages.stop(experiment_key, data.request(), viewer.actor)
        if problem is not None:
            page = await pages.stop_page(experiment_key, viewer.actor)
            return self._change_page(request, "stop", page, problem, sent=data)
        return see_other(home_of(viewer, experiment_key, "stopped"))

    # -- results and downloads

    @get("/{key:str}", opt={SCOPE_OPT: Scope.ANALYZE}, operation_id="consoleExperimentResults", include_in_schema=False)
    async def experiment_results(
        self,
        request: Request[Any, Any, Any],
        experiment_key: NamedDependency[str],
        analysis: NamedDependency[ExperimentPages],
        runtime: NamedDependency[Runtime],
        phase: Annotated[int | None, QueryParameter(ge=1, le=2_147_483_647)] = None,
        notice: Notice = "",
    ) -> Template:
        view = await analysis.results(experiment_key, phase)
        refresh_ms = results_refresh_ms(
            console_seconds=runtime.settings.console_experiment_refresh_seconds,
            statistics_seconds=runtime.settings.experiment_statistics_seconds,
        )
        return render(
            request,
            "experiment.html",
            view=view,
            notice=NOTICES.get(notice),
            refresh_ms=refresh_ms,
            section="experiments",
        )

    @get(
        "/{key:str}/live",
        opt={SCOPE_OPT: Scope.ANALYZE},
        operation_id="consoleExperimentResultsLive",
        include_in_schema=False,
    )
    async def experiment_results_live(
        self,
        request: Request[Any, Any, Any],
        experiment_key: NamedDependency[str],
        analysis: NamedDependency[ExperimentPages],
        phase: Annotated[int | None, QueryParameter(ge=1, le=2_147_483_647)] = None,
    ) -> Template:
        """The results page's moving parts alone (same query as the page), for ``static/live.js`` while it runs."""
        return render(request, "experiment-live.html", view=await analysis.results(experiment_key, phase))

    @get(
        "/{key:str}/export",
        opt={SCOPE_OPT: Scope.ANALYZE},
        operation_id="consoleExportExperiment",
        include_in_schema=False,
    )
    async def export(
        self,
        experiment_key: NamedDependency[str],
        analysis: NamedDependency[ExperimentPages],
        runtime: NamedDependency[Runtime],
        export_format: Annotated[ExportFormat, QueryParameter(name="format")] = "csv",
        phase: Annotated[int | None, QueryParameter(ge=1, le=2_147_483_647)] = None,
    ) -> Stream:
        """The API's export (``GET /v1/experiments/{key}/export``), through the console's session."""
        plan = await analysis.experiments.export_plan(
            experiment_key, phase=phase, exposed_from=None, exposed_to=None, format=export_format
        )
        return Stream(
            ExportService(runtime.read_sessionmaker).stream(plan),
            media_type=plan.media_type,
            headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{plan.filename}"'},
        )


__all__ = ["ExperimentPagesController"]
