"""The console's pages: server-rendered HTML under ``/console``, plain links and forms.

Every route names its scope in ``opt`` as the API's routes do (or ``public`` for sign-in). The
router's ``before_request`` hook runs before any handler: it checks the session's key with the
API's own ``authorize``, then the route's scope with ``grants`` (as ``authorize`` does), then the
CSRF token of every form; so a control a page hides is refused by the server as well. It runs
before the page's transaction opens, since the embedded default has a single connection.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import msgspec
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.access import SCOPE_OPT
from registry.auth.keys import Scope, grants
from registry.auth.schemas import MAX_REQUESTS_PER_MINUTE, CreateApiKey
from registry.completions.schemas import SetBudget
from registry.console import formatting, tokens
from registry.console.schemas import (
    BudgetForm,
    CreateKeyForm,
    PromoteForm,
    PromotionPlan,
    RateLimitForm,
    RedeliverForm,
    RevokeKeyForm,
    RollbackForm,
    SignInForm,
    SignOutForm,
    WebhookEnabledForm,
)
from registry.console.service import ConsoleAccess, ConsoleExperiments, ConsoleService, ConsoleWebhooks, prompt_path
from registry.console.sessions import ConsoleSessions, Viewer
from registry.deps import provide_resource_name
from registry.lib.errors import ForbiddenError, RegistryError, UnauthorizedError, translate_and_log
from registry.lib.pagination import PageRequest
from registry.lib.promotion import State
from registry.runtime import Runtime, runtime_of

CONSOLE_PREFIX = "/console"
SESSION_COOKIE = "registry_console"
SIGN_IN_COOKIE = "registry_console_sign_in"
PUBLIC_OPT = "public"
_VIEWER = "console_viewer"
CONSOLE_DIR = Path(__file__).parent
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SIGN_IN_MINUTES = 30

# Scripts only from the service itself (static/live.js, on pages of something still running), nothing inline,
# requests from scripts only to the service (live.js fetching a page's parts), no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Form = Body(media_type=RequestEncodingType.URL_ENCODED)


# --------------------------------------------------------------------------- templates


def console_template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja2 with autoescaping on: everything a page shows from the database is text, never markup."""
    environment = Environment(
        loader=FileSystemLoader(CONSOLE_DIR / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["segment"] = lambda value: quote(str(value), safe="")
    environment.filters["when"] = formatting.when
    environment.filters["number"] = formatting.number
    environment.filters["estimate"] = formatting.estimate
    environment.filters["p_value"] = formatting.p_value
    environment.filters["count"] = formatting.count
    environment.filters["cost"] = formatting.cost
    environment.filters["day"] = formatting.day
    environment.filters["percent"] = formatting.percent
    environment.filters["signed_percent"] = formatting.signed_percent
    environment.filters["pretty_json"] = formatting.pretty_json
    environment.globals["prompt_path"] = prompt_path
    environment.globals["page_link"] = page_link
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def page_link(path: str, **query: str | None) -> str:
    """``path`` with the query's non-empty values: a page with two pagers keeps the other's place in each link."""
    kept = urlencode({name: value for name, value in query.items() if value})
    return f"{path}?{kept}" if kept else path


def render(request: Request[Any, Any, Any], template: str, *, status_code: int = 200, **context: Any) -> Template:
    viewer: Viewer | None = request.scope["state"].get(_VIEWER)
    return Template(
        template_name=template,
        context={"viewer": viewer, "path": request.url.path, **context},
        status_code=status_code,
        headers=SECURITY_HEADERS,
    )


def see_other(location: str, **kwargs: Any) -> Redirect:
    return Redirect(location, status_code=303, headers=SECURITY_HEADERS, **kwargs)


# --------------------------------------------------------------------------- sessions


def is_tls(request: Request[Any, Any, Any]) -> bool:
    """TLS to this process, or to a proxy that says so (trusting the header only ever adds ``Secure``)."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def sessions_of(runtime: Runtime) -> ConsoleSessions:
    return ConsoleSessions(runtime, lifetime=timedelta(minutes=runtime.settings.console_session_minutes))


def cookie(request: Request[Any, Any, Any], key: str, value: str, *, minutes: int) -> Cookie:
    return Cookie(
        key=key,
        value=value,
        path=CONSOLE_PREFIX,
        max_age=minutes * 60,
        httponly=True,
        secure=is_tls(request),
        samesite="strict",
    )


def local_target(candidate: str | None) -> str:
    """Where to go after sign-in: a console page only, never another site."""
    if (
        candidate
        and candidate.startswith(f"{CONSOLE_PREFIX}/")
        and "\\" not in candidate
        and not candidate.startswith(f"{CONSOLE_PREFIX}/login")
    ):
        return candidate
    return f"{CONSOLE_PREFIX}/prompts"


def sign_in_redirect(request: Request[Any, Any, Any]) -> Redirect:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = urlencode({"next": target}) if request.method in _SAFE_METHODS else ""
    response = see_other(f"{CONSOLE_PREFIX}/login" + (f"?{query}" if query else ""))
    if SESSION_COOKIE in request.cookies:
        response.delete_cookie(SESSION_COOKIE, path=CONSOLE_PREFIX)
    return response


async def admit_viewer(request: Request[Any, Any, Any]) -> Redirect | None:
    """Before every console handler: the session's key checked for the route's scope, then the form's CSRF token."""
    handler = request.route_handler
    if handler.opt.get(PUBLIC_OPT) or handler.http_methods == {"OPTIONS"}:
        return None  # sign-in, and Litestar's automatic OPTIONS answer (lists the methods, returns no data)
    required = handler.opt.get(SCOPE_OPT)
    if not isinstance(required, Scope):
        raise RegistryError(f"console route {handler.handler_name} declares no scope")
    token = request.cookies.get(SESSION_COOKIE)
    principal = await sessions_of(runtime_of(request)).admit(token) if token else None
    if token is None or principal is None:
        return sign_in_redirect(request)
    request.scope["user"] = principal
    request.scope["state"][_VIEWER] = Viewer(
        principal, tokens.csrf_token(token), request.scope["state"].get("request_id")
    )
    if not grants(principal.scopes, required):
        raise ForbiddenError(f"this API key lacks the '{required.value}' scope")
    if request.method not in _SAFE_METHODS:
        form = await request.form()
        if not tokens.csrf_matches(token, form.get("csrf")):
            raise ForbiddenError("this form is out of date or was not sent by the console; reload the page")
    return None


def console_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Errors as pages (the API's problem+json is for programs); a lost session goes back to sign-in."""
    error = translate_and_log(exc, request.url.path)
    if isinstance(error, UnauthorizedError):
        return sign_in_redirect(request)
    return render(
        request,
        "error.html",
        status_code=error.status_code,
        error=error,
        request_id=request.scope["state"].get("request_id"),
    )


def provide_viewer(request: Request[Any, Any, Any]) -> Viewer:
    viewer: Viewer = request.scope["state"][_VIEWER]
    return viewer


def provide_console_service(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ConsoleService:
    return ConsoleService(db_session, runtime.prompt_limits)


# --------------------------------------------------------------------------- pages


def provide_console_experiments(
    read_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ConsoleExperiments:
    """On the read replica, as the API's results; a page using it takes no other session (one SQLite connection)."""
    return ConsoleExperiments(read_session, runtime.prompt_limits)


class SignInController(Controller):
    path = CONSOLE_PREFIX
    opt = {PUBLIC_OPT: True}

    @get("/login", operation_id="consoleSignInPage", include_in_schema=False)
    async def sign_in_page(
        self,
        request: Request[Any, Any, Any],
        next_path: Annotated[str | None, QueryParameter(name="next", max_length=2000)] = None,
        signed_out: Annotated[bool, QueryParameter(name="signed_out")] = False,
    ) -> Template:
        return self._form(request, next_path=next_path, notice="You are signed out." if signed_out else None)

    @post("/login", operation_id="consoleSignIn", include_in_schema=False)
    async def sign_in(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[SignInForm, Form],
        runtime: NamedDependency[Runtime],
    ) -> Response[Any]:
        next_path = data.next
        pending = request.cookies.get(SIGN_IN_COOKIE)
        if pending is None or not tokens.csrf_matches(pending, data.csrf, login=True):
            return self._form(
                request, next_path=next_path, error="The sign-in form expired. Please try again.", status_code=403
            )
        try:
            token = await sessions_of(runtime).sign_in(data.api_key)
        except UnauthorizedError:
            return self._form(
                request,
                next_path=next_path,
                error="That API key is not valid, or it was revoked or has expired.",
                status_code=401,
            )
        except ForbiddenError:
            return self._form(
                request,
                next_path=next_path,
                error="That API key cannot read prompts, so it cannot use the console.",
                status_code=403,
            )
        response = see_other(local_target(next_path))
        response.set_cookie(cookie(request, SESSION_COOKIE, token, minutes=runtime.settings.console_session_minutes))
        response.delete_cookie(SIGN_IN_COOKIE, path=CONSOLE_PREFIX)
        return response

    def _form(
        self,
        request: Request[Any, Any, Any],
        *,
        next_path: str | None,
        error: str | None = None,
        notice: str | None = None,
        status_code: int = 200,
    ) -> Template:
        pending = request.cookies.get(SIGN_IN_COOKIE) or tokens.new_token()
        response = render(
            request,
            "login.html",
            status_code=status_code,
            csrf=tokens.csrf_token(pending, login=True),
            next_path=local_target(next_path),
            error=error,
            notice=notice,
        )
        response.set_cookie(cookie(request, SIGN_IN_COOKIE, pending, minutes=_SIGN_IN_MINUTES))
        return response


class ConsoleController(Controller):
    path = CONSOLE_PREFIX
    dependencies = {
        "viewer": Provide(provide_viewer, sync_to_thread=False),
        "console": Provide(provide_console_service, sync_to_thread=False),
        "resource_name": Provide(provide_resource_name, sync_to_thread=False),
    }

    @get("/", opt={SCOPE_OPT: Scope.READ}, operation_id="consoleHome", include_in_schema=False)
    async def home(self) -> Redirect:
        return see_other(f"{CONSOLE_PREFIX}/prompts")

    @post("/logout", opt={SCOPE_OPT: Scope.READ}, operation_id="consoleSignOut", include_in_schema=False)
    async def sign_out(
        self, request: Request[Any, Any, Any], data: Annotated[SignOutForm, Form], runtime: NamedDependency[Runtime]
    ) -> Redirect:
        await sessions_of(runtime).sign_out(request.cookies[SESSION_COOKIE])
        response = see_other(f"{CONSOLE_PREFIX}/login?signed_out=true")
        response.delete_cookie(SESSION_COOKIE, path=CONSOLE_PREFIX)
        return response

    @get("/prompts", opt={SCOPE_OPT: Scope.READ}, operation_id="consolePrompts", include_in_schema=False)
    async def prompts(
        self,
        request: Request[Any, Any, Any],
        console: NamedDependency[ConsoleService],
        page: NamedDependency[PageRequest],
        prefix: Annotated[str, QueryParameter(name="q", max_length=128)] = "",
        tag: Annotated[str, QueryParameter(max_length=64)] = "",
    ) -> Template:
        listing = await console.list_prompts(page, prefix=prefix.strip(), tag=tag.strip())
        return render(request, "prompts.html", listing=listing, section="prompts")

    @get("/prompts/{name:str}", opt={SCOPE_OPT: Scope.READ}, operation_id="consolePrompt", include_in_schema=False)
    async def prompt(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        console: NamedDependency[ConsoleService],
        changed: Annotated[int | None, QueryParameter(ge=1)] = None,
        to: Annotated[Literal["staging", "production", "archived"] | None, QueryParameter()] = None,
        versions_after: Annotated[str | None, QueryParameter(name="cursor", max_length=200)] = None,
        history_after: Annotated[str | None, QueryParameter(name="history", max_length=200)] = None,
        rollouts_after: Annotated[str | None, QueryParameter(name="rollouts", max_length=200)] = None,
    ) -> Template:
        view = await console.prompt_page(resource_name, versions_after, history_after, rollouts_after)
        notice = f"Version {changed} is now {to}." if changed and to and view.holds(changed, to) else None
        return render(
            request,
            "prompt.html",
            prompt=view,
            notice=notice,
            versions_at=versions_after or "",
            history_at=history_after or "",
            rollouts_at=rollouts_after or "",
            section="prompts",
        )

    @get("/prompts/{name:str}/diff", opt={SCOPE_OPT: Scope.READ}, operation_id="consoleDiff", include_in_schema=False)
    async def diff(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        console: NamedDependency[ConsoleService],
        from_version: Annotated[int, QueryParameter(name="from", ge=1, le=2_147_483_647)],
        to_version: Annotated[int, QueryParameter(name="to", ge=1, le=2_147_483_647)],
    ) -> Template:
        view = await console.diff(resource_name, from_version, to_version)
        return render(request, "diff.html", diff=view, section="prompts")

    @get(
        "/prompts/{name:str}/versions/{version:int}/promote",
        opt={SCOPE_OPT: Scope.PROMOTE},
        operation_id="consolePromotePlan",
        include_in_schema=False,
    )
    async def promote_plan(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        version: FromPath[int],
        console: NamedDependency[ConsoleService],
        to: Annotated[Literal["staging", "production", "archived"], QueryParameter()] = "production",
    ) -> Template:
        plan = await console.plan_promotion(resource_name, version, State(to))
        return render(request, "change.html", plan=plan, section="prompts")

    @post(
        "/prompts/{name:str}/versions/{version:int}/promote",
        opt={SCOPE_OPT: Scope.PROMOTE},
        operation_id="consolePromote",
        include_in_schema=False,
    )
    async def promote(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        version: FromPath[int],
        data: Annotated[PromoteForm, Form],
        console: NamedDependency[ConsoleService],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        outcome = await console.promote(
            resource_name,
            version,
            State(data.to),
            expected=data.expected(),
            reason=data.reason.strip(),
            actor=viewer.actor,
            override_gate=data.override_gate.strip(),
        )
        if isinstance(outcome, PromotionPlan):  # an evaluation gate refused it: the dialog again, with the evidence
            return render(request, "change.html", status_code=422, plan=outcome, section="prompts")
        if outcome is not None:
            return render(request, "conflict.html", status_code=409, conflict=outcome, section="prompts")
        return see_other(f"{prompt_path(resource_name)}?{urlencode({'changed': version, 'to': data.to})}")

    @get(
        "/prompts/{name:str}/rollback",
        opt={SCOPE_OPT: Scope.PROMOTE},
        operation_id="consoleRollbackPlan",
        include_in_schema=False,
    )
    async def rollback_plan(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        console: NamedDependency[ConsoleService],
        version: Annotated[int | None, QueryParameter(ge=1, le=2_147_483_647)] = None,
    ) -> Template:
        plan = await console.plan_rollback(resource_name, version)
        return render(request, "change.html", plan=plan, section="prompts")

    @post(
        "/prompts/{name:str}/rollback",
        opt={SCOPE_OPT: Scope.PROMOTE},
        operation_id="consoleRollback",
        include_in_schema=False,
    )
    async def rollback(
        self,
        request: Request[Any, Any, Any],
        resource_name: NamedDependency[str],
        data: Annotated[RollbackForm, Form],
        console: NamedDependency[ConsoleService],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        number = int(data.version)
        outcome = await console.rollback(
            resource_name, number, expected=data.expected(), reason=data.reason.strip(), actor=viewer.actor
        )
        if isinstance(outcome, PromotionPlan):  # the form was refused: the dialog again, saying why
            return render(request, "change.html", status_code=422, plan=outcome, section="prompts")
        if outcome is not None:
            return render(request, "conflict.html", status_code=409, conflict=outcome, section="prompts")
        return see_other(f"{prompt_path(resource_name)}?{urlencode({'changed': number, 'to': 'production'})}")

    @get("/audit", opt={SCOPE_OPT: Scope.ADMIN}, operation_id="consoleAudit", include_in_schema=False)
    async def audit(
        self,
        request: Request[Any, Any, Any],
        console: NamedDependency[ConsoleService],
        page: NamedDependency[PageRequest],
        actor: Annotated[str, QueryParameter(max_length=128)] = "",
        resource_type: Annotated[str, QueryParameter(max_length=32)] = "",
        resource: Annotated[str, QueryParameter(max_length=256)] = "",
    ) -> Template:
        listing = await console.audit_log(
            page, actor=actor.strip(), resource_type=resource_type.strip(), resource_name=resource.strip()
        )
        return render(request, "audit.html", listing=listing, section="audit")


def provide_console_access(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ConsoleAccess:
    return ConsoleAccess(db_session, runtime.completions)


def provide_console_usage(
    read_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ConsoleAccess:
    """On the read replica, as ``GET /v1/usage``; the usage page takes no other session."""
    return ConsoleAccess(read_session, runtime.completions)


def provide_console_webhooks(
    db_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]
) -> ConsoleWebhooks:
    return ConsoleWebhooks(db_session, runtime.webhooks.guard)


class FormProblemError(ValueError):
    """A console form's value the API would refuse, in words for the page."""


def optional_int(value: str, field: str, *, maximum: int) -> int | None:
    text = value.strip().replace(",", "").replace("_", "")
    if not text:
        return None
    if not text.isdigit() or int(text) > maximum:
        raise FormProblemError(f"{field} must be a whole number from 0 to {maximum:,}, or empty")
    return int(text)


def optional_cost(value: str) -> float | None:
    text = value.strip().lstrip("$").replace(",", "")
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not (0 <= number < 1e12):
        raise FormProblemError("Monthly cost must be a non-negative amount, or empty")
    return number


def new_key_request(form: CreateKeyForm) -> CreateApiKey:
    """The API's own request, so the console refuses exactly what ``POST /v1/keys`` refuses."""
    if not form.scopes():
        raise FormProblemError("Choose at least one scope")
    per_minute = optional_int(form.rate_limit_per_minute, "Rate limit", maximum=MAX_REQUESTS_PER_MINUTE)
    try:
        return msgspec.convert(
            {"name": form.name.strip(), "scopes": form.scopes(), "rate_limit_per_minute": per_minute}, CreateApiKey
        )
    except msgspec.ValidationError as exc:
        raise FormProblemError(
            "A name is 1 to 64 letters, digits, '.', '_' or '-', and starts with a letter or digit"
            if "$.name" in str(exc)
            else str(exc)
        ) from exc


USAGE_WINDOWS = (7, 30, 90)
MAX_MONTHLY_TOKENS = 2_147_483_647  # the budget table's column is a 32-bit integer


class OperationsController(Controller):
    """Usage and budgets, API keys and webhooks: the pages of the people who run the service."""

    path = CONSOLE_PREFIX
    dependencies = {
        "viewer": Provide(provide_viewer, sync_to_thread=False),
        "access": Provide(provide_console_access, sync_to_thread=False),
        "usage": Provide(provide_console_usage, sync_to_thread=False),
        "webhooks": Provide(provide_console_webhooks, sync_to_thread=False),
    }

    @get("/usage", opt={SCOPE_OPT: Scope.ANALYZE}, operation_id="consoleUsage", include_in_schema=False)
    async def usage_page(
        self,
        request: Request[Any, Any, Any],
        usage: NamedDependency[ConsoleAccess],
        viewer: NamedDependency[Viewer],
        by: Annotated[Literal["prompt", "key"], QueryParameter()] = "prompt",
        days: Annotated[Literal[7, 30, 90], QueryParameter()] = 30,
    ) -> Template:
        view = await usage.usage_page(
            by=by, days=days, last=datetime.now(UTC).date(), show_keys=viewer.can(Scope.ADMIN)
        )
        return render(request, "usage.html", view=view, windows=USAGE_WINDOWS, section="usage")

    # -- API keys (admin only, as on the API)

    @get("/keys", opt={SCOPE_OPT: Scope.ADMIN}, operation_id="consoleKeys", include_in_schema=False)
    async def keys_page(
        self,
        request: Request[Any, Any, Any],
        access: NamedDependency[ConsoleAccess],
        page: NamedDependency[PageRequest],
        revoked: Annotated[bool, QueryParameter()] = False,
        notice: Annotated[Literal["revoked", ""], QueryParameter()] = "",
    ) -> Template:
        return await self._keys(request, access, page, include_revoked=revoked, notice=notice)

    async def _keys(
        self,
        request: Request[Any, Any, Any],
        access: ConsoleAccess,
        page: PageRequest,
        *,
        include_revoked: bool = False,
        notice: str = "",
        error: str | None = None,
        form: CreateKeyForm | None = None,
    ) -> Template:
        listing = await access.keys_page(page, include_revoked=include_revoked)
        return render(
            request,
            "keys.html",
            status_code=400 if error else 200,
            listing=listing,
            notice="The key is revoked." if notice == "revoked" else None,
            error=error,
            form=form or CreateKeyForm(),
            section="keys",
        )

    @post("/keys", opt={SCOPE_OPT: Scope.ADMIN}, operation_id="consoleCreateKey", include_in_schema=False)
    async def create_key(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[CreateKeyForm, Form],
        access: NamedDependency[ConsoleAccess],
        page: NamedDependency[PageRequest],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        try:
            wanted = new_key_request(data)
        except FormProblemError as problem:
            return await self._keys(request, access, page, error=str(problem), form=data)
        key, shown_id = await access.create_key(wanted, viewer.actor, session_token=request.cookies[SESSION_COOKIE])
        # Post/Redirect/Get: the secret waits, sealed, for the next page, which shows it once; a reload or a
        # back/forward re-reads that page (no second key), and the URL names the secret's row, never the secret.
        query = urlencode({"shown": shown_id})
        return see_other(f"{CONSOLE_PREFIX}/keys/{quote(key.id, safe='')}/created?{query}")

    @get(
        "/keys/{key_id:str}/created",
        opt={SCOPE_OPT: Scope.ADMIN},
        operation_id="consoleKeyCreated",
        include_in_schema=False,
    )
    async def key_created(
        self,
        request: Request[Any, Any, Any],
        key_id: FromPath[str],
        access: NamedDependency[ConsoleAccess],
        shown: Annotated[str, QueryParameter(max_length=64)] = "",
    ) -> Template:
        key = await access.key(key_id)
        secret = (
            await access.take_new_secret(key_id, session_token=request.cookies[SESSION_COOKIE], shown_id=shown)
            if shown
            else None
        )
        return render(request, "key-created.html", key=key, secret=secret, section="keys")

    @get("/keys/{key_id:str}", opt={SCOPE_OPT: Scope.ADMIN}, operation_id="consoleKey", include_in_schema=False)
    async def key_page(
        self,
        request: Request[Any, Any, Any],
        key_id: FromPath[str],
        access: NamedDependency[ConsoleAccess],
        saved: Annotated[Literal["rate-limit", "budget", ""], QueryParameter()] = "",
    ) -> Template:
        notice = {"rate-limit": "The rate limit is saved.", "budget": "The budget is saved."}.get(saved)
        return render(
            request,
            "key.html",
            key=await access.key(key_id),
            notice=notice,
            error=None,
            sent_rate=None,
            sent_budget=None,
            section="keys",
        )

    async def _key_problem(
        self,
        request: Request[Any, Any, Any],
        access: ConsoleAccess,
        key_id: str,
        problem: FormProblemError,
        sent: RateLimitForm | BudgetForm,
    ) -> Template:
        """The key's page again with the problem, and the refused form holding what was typed instead of the key's
        stored values."""
        key = await access.key(key_id)
        return render(
            request,
            "key.html",
            status_code=400,
            key=key,
            notice=None,
            error=str(problem),
            sent_rate=sent if isinstance(sent, RateLimitForm) else None,
            sent_budget=sent if isinstance(sent, BudgetForm) else None,
            section="keys",
        )

    @post(
        "/keys/{key_id:str}/rate-limit",
        opt={SCOPE_OPT: Scope.ADMIN},
        operation_id="consoleSetRateLimit",
        include_in_schema=False,
    )
    async def set_rate_limit(
        self,
        request: Request[Any, Any, Any],
        key_id: FromPath[str],
        data: Annotated[RateLimitForm, Form],
        access: NamedDependency[ConsoleAccess],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        try:
            per_minute = optional_int(data.per_minute, "Requests per minute", maximum=MAX_REQUESTS_PER_MINUTE)
        except FormProblemError as problem:
            return await self._key_problem(request, access, key_id, problem, data)
        await access.set_rate_limit(key_id, per_minute, viewer.actor)
        return see_other(f"{CONSOLE_PREFIX}/keys/{quote(key_id, safe='')}?saved=rate-limit")

    @post(
        "/keys/{key_id:str}/budget",
        opt={SCOPE_OPT: Scope.ADMIN},
        operation_id="consoleSetBudget",
        include_in_schema=False,
    )
    async def set_budget(
        self,
        request: Request[Any, Any, Any],
        key_id: FromPath[str],
        data: Annotated[BudgetForm, Form],
        access: NamedDependency[ConsoleAccess],
        viewer: NamedDependency[Viewer],
    ) -> Response[Any]:
        try:
            budget = SetBudget(
                monthly_tokens=optional_int(data.monthly_tokens, "Tokens per month", maximum=MAX_MONTHLY_TOKENS),
                monthly_cost=optional_cost(data.monthly_cost),
            )
        except FormProblemError as problem:
            return await self._key_problem(request, access, key_id, problem, data)
        await access.set_budget(key_id, budget, viewer.actor)
        return see_other(f"{CONSOLE_PREFIX}/keys/{quote(key_id, safe='')}?saved=budget")

    @get(
        "/keys/{key_id:str}/revoke",
        opt={SCOPE_OPT: Scope.ADMIN},
        operation_id="consoleRevokePlan",
        include_in_schema=False,
    )
    async def revoke_plan(
        self, request: Request[Any, Any, Any], key_id: FromPath[str], access: NamedDependency[ConsoleAccess]
    ) -> Template:
        return render(request, "revoke.html", key=await access.key(key_id), section="keys")

    @post(
        "/keys/{key_id:str}/revoke",
        opt={SCOPE_OPT: Scope.ADMIN},
        operation_id="consoleRevokeKey",
        include_in_schema=False,
    )
    async def revoke_key(
        self,
        key_id: FromPath[str],
        data: Annotated[RevokeKeyForm, Form],
        access: NamedDependency[ConsoleAccess],
        viewer: NamedDependency[Viewer],
    ) -> Redirect:
        await access.revoke_key(key_id, viewer.actor)
        return see_other(f"{CONSOLE_PREFIX}/keys?notice=revoked")

    # -- webhooks (admin only, as on the API)

    @get("/webhooks", opt={SCOPE_OPT: Scope.ADMIN}, operation_id="consoleWebhooks", include_in_schema=False)
    async def webhook_list(
        self,
        request: Request[Any, Any, Any],
        webhooks: NamedDependency[ConsoleWebhooks],
        page: NamedDependency[PageRequest],
    ) -> Template:
        rows, cursor = await webhooks.list_webhooks(page)
        return render(request, "webhooks.html", rows=rows, next_cursor=cursor, section="webhooks")

    @get(
        "/webhooks/{webhook_id:int}",
        opt={SCOPE_OPT: Scope.ADMIN},
        operation_id="consoleWebhook",
        include_in_schema=False,
    )
    async def webhook_page(
        self,
        request: Request[Any, Any, Any],
        webhook_id: FromPath[int],
        webhooks: NamedDependency[ConsoleWebhooks],
        page: NamedDependency[PageRequest],
        status: Annotated[Literal["pending", "retrying", "succeeded", "dead", ""], QueryParameter()] = "",
        redelivered: Annotated[int | None, QueryParameter(ge=1)] = None,
        switched: Annotated[Literal["enabled", "disabled"] | None, QueryParameter()] = None,
    ) -> Template:
        view = await webhooks.webhook_page(webhook_id, page, status=status)
        notice = f"Delivery {redelivered} will be sent again shortly." if redelivered else None
        if switched == "enabled":
            notice = "The webhook is enabled: events from now on are delivered."
        elif switched == "disabled":
            notice = "The webhook is disabled: nothing is sent to it until it is enabled."
        return render(request, "webhook.html", view=view, notice=notice, section="webhooks")

    @post(
        "/webhooks/{webhook_id:int}/deliveries/{delivery_id:int}/redeliver",
        opt={SCOPE_OPT: Scope.ADMIN},
        operation_id="consoleRedeliver",
        include_in_schema=False,
    )
    async def redeliver(
        self,
        webhook_id: FromPath[int],
        delivery_id: FromPath[int],
        data: Annotated[RedeliverForm, Form],
        webhooks: NamedDependency[ConsoleWebhooks],
        viewer: NamedDependency[Viewer],
    ) -> Redirect:
        await webhooks.redeliver(webhook_id, delivery_id, viewer.actor)
        return see_other(f"{CONSOLE_PREFIX}/webhooks/{webhook_id}?{urlencode({'redelivered': delivery_id})}")

    @post(
        "/webhooks/{webhook_id:int}/enabled",
        opt={SCOPE_OPT: Scope.ADMIN},
        operation_id="consoleSetWebhookEnabled",
        include_in_schema=False,
    )
    async def set_webhook_enabled(
        self,
        webhook_id: FromPath[int],
        data: Annotated[WebhookEnabledForm, Form],
        webhooks: NamedDependency[ConsoleWebhooks],
        viewer: NamedDependency[Viewer],
    ) -> Redirect:
        enabled = data.enabled == "true"
        await webhooks.set_enabled(webhook_id, enabled, viewer.actor)
        switched = "enabled" if enabled else "disabled"
        return see_other(f"{CONSOLE_PREFIX}/webhooks/{webhook_id}?{urlencode({'switched': switched})}")
