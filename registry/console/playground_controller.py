"""The playground's pages: pick versions, fill the variables, render, and run with tokens streaming in.

How tokens reach the page without scripts: the run form's POST is answered with a chunked HTML
page that the server writes as the completion runs. The page up to the output is written at once;
then each token delta, escaped, as it arrives; then the usage and cost; then the rest of the page
(the form again, filled in). Browsers parse and paint a page as it arrives, so this streams with
no JavaScript at all, under the console's CSP, and a run is one request: its key, variables and
lifetime stay in that request (no run token in a URL, works with any number of workers), and
leaving the page disconnects it, which the completion service records as a cancelled run.

A reload of that page (or a back/forward to it) sends the form again, which would run and bill the
completions again: each page's form carries a run id of its own (``run``), and a run records it as
made in the console's session rows, shared by all workers (``Playground.claim_run``); the same id sent
again runs nothing and answers the page, filled in, saying so (409), with a new id for Run.

Two versions side by side are two completions in that one response, their deltas interleaved as
they come (``playground.Interleaved``). Each delta is a ``<span slot="a">`` (or ``"b"``) child of
one element whose declarative shadow root (``<template shadowrootmode="open">``, parsed by the
browser, no script) has a column per version with a slot for it: the browser moves every span
into its column, so both columns fill at once. The alternatives were weighed: two iframes would
each need their run (variables included) stored server-side for a one-time GET, and a vendored
fetch script would leave the page without streaming when scripts are off.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Annotated, Any

from jinja2 import Environment
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from markupsafe import Markup, escape

from registry.auth.access import SCOPE_OPT
from registry.auth.keys import Scope
from registry.completions.controller import CompletionController
from registry.completions.fast_path import started
from registry.completions.schemas import DeltaEvent, DoneEvent
from registry.completions.service import Caller
from registry.console import tokens
from registry.console.controller import (
    CONSOLE_PREFIX,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    provide_console_service,
    provide_viewer,
    render,
)
from registry.console.playground import (
    Interleaved,
    OpenedRun,
    Playground,
    PlaygroundView,
    RenderResult,
    Selection,
    SideEvent,
)
from registry.console.playground_form import parse_variables
from registry.console.service import ConsoleService
from registry.console.sessions import Viewer
from registry.deps import provide_resource_name
from registry.lib.disconnect import cancel_on_disconnect
from registry.lib.errors import FieldError, InvalidInputError, RegistryError, translate_and_log
from registry.lib.pagination import PageRequest
from registry.lib.streaming import PrimedStream
from registry.runtime import Runtime

# A run needs what POST /v1/prompts/{name}/complete needs: the scope is read from that route.
COMPLETE_SCOPE: Scope = CompletionController.complete.opt[SCOPE_OPT]
VARIABLE_PREFIX = "var."
MAX_TOKENS_LIMIT = 1_000_000  # as CompleteRequest.max_tokens
STREAM_HEADERS = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
HTML = "text/html; charset=utf-8"
PICKERS = ("version", "config", "compare_version", "compare_config")
RUN_FIELD = "run"  # the form's run id: a run made with it is not made again
ALREADY_RUN = "This run was already made, so sending its form again ran nothing; press Run to run it again."


def may_run(viewer: Viewer) -> bool:
    """Whether the page offers Run: the key may call the completion API (the route checks it again)."""
    return viewer.can(COMPLETE_SCOPE)


def provide_playground(runtime: NamedDependency[Runtime]) -> Playground:
    return Playground(
        runtime.sessionmaker,
        runtime.prompts,
        runtime.completions,
        runtime.prompt_limits,
        run_forms_last=timedelta(minutes=runtime.settings.console_session_minutes),
    )


def _number(values: Mapping[str, Any], name: str, *, maximum: int) -> int | None:
    text = str(values.get(name) or "").strip()
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) <= maximum:
        raise InvalidInputError(
            f"{name} must be a whole number from 1 to {maximum:,}",
            errors=[FieldError(name, f"must be a whole number from 1 to {maximum:,}")],
        )
    return int(text)


def selection_of(values: Mapping[str, Any]) -> Selection:
    """The pickers' choices, from the query string or the form's hidden fields."""
    return Selection(
        version=_number(values, "version", maximum=2_147_483_647),
        config=str(values.get("config") or "").strip()[:300],
        compare_version=_number(values, "compare_version", maximum=2_147_483_647),
        compare_config=str(values.get("compare_config") or "").strip()[:300],
    )


def picked(values: Mapping[str, Any]) -> tuple[Selection, dict[str, str], dict[str, str]]:
    """The pickers' choices from the query string, each picker's text as typed, and the problem of each number that
    is not one (left out of the choices, so the page opens on what remains and says so at that picker)."""
    typed = {name: str(values.get(name) or "").strip()[:300] for name in PICKERS}
    problems: dict[str, str] = {}
    numbers: dict[str, int | None] = {}
    for name in ("version", "compare_version"):
        try:
            numbers[name] = _number(values, name, maximum=2_147_483_647)
        except InvalidInputError as exc:
            numbers[name] = None
            problems[name] = f"'{typed[name]}' is not a version: {exc.errors[0].message}"
    selection = Selection(
        version=numbers["version"],
        config=typed["config"],
        compare_version=numbers["compare_version"],
        compare_config=typed["compare_config"] if numbers["compare_version"] else "",
    )
    if typed["compare_config"] and not selection.compare_version and "compare_version" not in problems:
        problems["compare_config"] = "Choose the second version for this config, or leave it empty"
    return selection, problems, typed


def submitted_values(form: Mapping[str, Any], view: PlaygroundView) -> dict[str, str]:
    """Each variable's field as the form sent it (an unticked checkbox sends nothing: empty)."""
    return {field.name: str(form.get(VARIABLE_PREFIX + field.name) or "") for field in view.fields}


def _environment(request: Request[Any, Any, Any]) -> Environment:
    engine = request.app.template_engine
    if not isinstance(engine, JinjaTemplateEngine):  # pragma: no cover - the app is built with Jinja
        raise RegistryError("the console needs the Jinja template engine")
    return engine.engine


class PlaygroundController(Controller):
    path = CONSOLE_PREFIX
    dependencies = {
        "viewer": Provide(provide_viewer, sync_to_thread=False),
        "playground": Provide(provide_playground, sync_to_thread=False),
        "console": Provide(provide_console_service, sync_to_thread=False),
        "resource_name": Provide(provide_resource_name, sync_to_thread=False),
    }

    @get("/playground", opt={SCOPE_OPT: Scope.READ}, operation_id="consolePlaygroundPrompts", include_in_schema=False)
    async def prompts(
        self,
        request: Request[Any, Any, Any],
        console: NamedDependency[ConsoleService],
        page: NamedDependency[PageRequest],
        prefix: Annotated[str, QueryParameter(name="q", max_length=128)] = "",
    ) -> Template:
        listing = await console.list_prompts(page, prefix=prefix.strip(), tag="")
        return render(
            request, "playground-prompts.html", listing=listing, complete_scope=COMPLETE_SCOPE, section="playground"
        )

    @get(
        "/prompts/{name:str}/playground",
        opt={SCOPE_OPT: Scope.READ},
        operation_id="consolePlayground",
        include_in_schema=False,
    )
    async def playground_page(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        playground: NamedDependency[Playground],
        viewer: NamedDependency[Viewer],
    ) -> Template:
        selection, problems, typed = picked(request.query_params)
        view, refused = await playground.view_picked(resource_name, selection)
        problems |= refused
        values = {field.name: field.initial for field in view.fields}
        if problems:  # the page of what could be chosen, each mistyped picker as typed and saying why
            return self._page(
                request, view, viewer, values=values, picker_problems=problems, typed=typed, status_code=422
            )
        return self._page(request, view, viewer, values=values)

    @post(
        "/prompts/{name:str}/playground/render",
        opt={SCOPE_OPT: Scope.READ},
        operation_id="consolePlaygroundRender",
        include_in_schema=False,
    )
    async def render_versions(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        playground: NamedDependency[Playground],
        viewer: NamedDependency[Viewer],
    ) -> Template:
        form = await request.form()
        view = await playground.view(resource_name, selection_of(form))
        values = submitted_values(form, view)
        variables, problems = parse_variables(view.fields, values)
        if problems:
            return self._page(request, view, viewer, values=values, problems=problems, status_code=400)
        renders = await playground.render(view, variables)
        return self._page(request, view, viewer, values=values, renders=renders, status_code=_status(renders))

    @post(
        "/prompts/{name:str}/playground/run",
        opt={SCOPE_OPT: COMPLETE_SCOPE},
        operation_id="consolePlaygroundRun",
        include_in_schema=False,
    )
    async def run(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        playground: NamedDependency[Playground],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        form = await request.form()
        view = await playground.view(resource_name, selection_of(form))
        values = submitted_values(form, view)
        max_tokens_text = str(form.get("max_tokens") or "")
        variables, problems = parse_variables(view.fields, values)
        try:
            max_tokens = _number(form, "max_tokens", maximum=MAX_TOKENS_LIMIT)
        except InvalidInputError as exc:
            problems += exc.errors
        run_id = str(form.get(RUN_FIELD) or "").strip()
        if not 0 < len(run_id) <= 64:
            problems.append(FieldError(RUN_FIELD, "is missing: press Run on the playground page"))
        if problems:
            return self._page(
                request, view, viewer, values=values, max_tokens=max_tokens_text, problems=problems, status_code=400
            )
        if not await playground.claim_run(request.cookies[SESSION_COOKIE], run_id, key=viewer.principal.public_id):
            return self._page(
                request, view, viewer, values=values, max_tokens=max_tokens_text, notice=ALREADY_RUN, status_code=409
            )
        caller = Caller(key=viewer.principal.public_id, request_id=viewer.request_id)
        # The body is read: whatever receive gives now is the disconnect, which cancels the runs as it would the API's.
        runs = await cancel_on_disconnect(
            request.receive, playground.open_runs(view, variables, caller, max_tokens=max_tokens)
        )
        if all(run.stream is None for run in runs):
            return self._page(
                request, view, viewer, values=values, max_tokens=max_tokens_text, runs=runs, status_code=_status(runs)
            )
        path = request.url.path
        # The runs start reading now, so each is read to its end and recorded whether or not the page is sent.
        interleaved = Interleaved(runs, lambda exc: translate_and_log(exc, path))
        try:
            marker = f"<!--stream-{secrets.token_hex(16)}-->"
            page = self._page(
                request, view, viewer, values=values, max_tokens=max_tokens_text, runs=runs, marker=marker
            )
            environment = _environment(request)
            head, tail = environment.get_template(page.template_name or "").render(**page.context).split(marker)
            parts = environment.get_template("playground-parts.html").module
        except BaseException:
            await interleaved.close()
            raise

        async def written() -> AsyncIterator[bytes]:
            """The page as the runs go: head, each side's deltas and outcome as they come, tail."""
            try:
                yield head.encode()
                async for event in interleaved.events():
                    yield stream_fragment(parts, event).encode()
                yield tail.encode()
            finally:
                await interleaved.close()

        first, rest = await started(written())
        return PrimedStream(first, rest, media_type=HTML, headers=STREAM_HEADERS)

    def _page(
        self,
        request: Request[Any, Any, Any],
        view: PlaygroundView,
        viewer: Viewer,
        *,
        values: dict[str, str],
        max_tokens: str = "",
        problems: list[FieldError] | None = None,
        renders: list[RenderResult] | None = None,
        runs: list[OpenedRun] | None = None,
        marker: str | None = None,
        notice: str | None = None,
        picker_problems: dict[str, str] | None = None,
        typed: dict[str, str] | None = None,
        status_code: int = 200,
    ) -> Template:
        return render(
            request,
            "playground.html",
            status_code=status_code,
            view=view,
            values=values,
            max_tokens=max_tokens,
            problems={problem.field: problem.message for problem in problems or []},
            picker_problems=picker_problems or {},
            typed=typed or {},
            renders=renders,
            runs=runs,
            marker=Markup(marker) if marker else None,  # noqa: S704 - our own comment, random, no outside text
            can_run=may_run(viewer),
            run_id=tokens.new_token(),
            notice=notice,
            section="playground",
        )


def _status(results: list[RenderResult] | list[OpenedRun]) -> int:
    """200 when any version rendered or ran; otherwise the first problem's status."""
    errors = [result.error for result in results if result.error is not None]
    return errors[0].status_code if errors and len(errors) == len(results) else 200


def stream_fragment(parts: Any, event: SideEvent) -> str:
    """A delta as escaped text in its side's column; a side's outcome (usage and cost, or its problem) below it."""
    if isinstance(event.data, DeltaEvent):
        return f'<span slot="{event.side}">{escape(event.data.text)}</span>'
    if isinstance(event.data, DoneEvent):
        return str(parts.outcome(event.side, done=event.data))
    if isinstance(event.data, RegistryError):
        return str(parts.outcome(event.side, error=event.data))
    return ""
