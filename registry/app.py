"""The application factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp

from registry import __version__
from registry.alerts.controller import AlertIncidentController, AlertRuleController
from registry.auth.access import SCOPE_OPT, authorize_request
from registry.auth.controller import ApiKeyController, AuditController
from registry.auth.keys import Scope
from registry.completions.controller import BudgetController, CompletionController, UsageController
from registry.completions.fast_path import CompletionFastPath
from registry.completions.semantic_controller import SemanticCacheController
from registry.configs.controller import ConfigController
from registry.console.controller import CONSOLE_PREFIX, console_error, console_template_config
from registry.console.routes import console_routers
from registry.deps import COMMON_DEPENDENCIES
from registry.evals.controller import DatasetController, GateController, RunController
from registry.experiments.controller import (
    EventController,
    ExperimentController,
    ExposureController,
    MetricController,
    UnitController,
)
from registry.feed.controller import ChangeFeedController
from registry.lib.errors import ErrorShape, ExceptionHandler, RegistryError, exception_handler
from registry.lib.http import RegistryRequest, RequestContextMiddleware, RequestLimits
from registry.lib.logging import configure_logging
from registry.lib.openapi import api_openapi_config, declare_problem_responses, document_operations
from registry.lib.routing import ApiRouter
from registry.lib.tracing import Tracing
from registry.openai_compat.controller import OpenAIController
from registry.openai_compat.fast_path import OpenAIFastPath
from registry.openai_compat.schemas import ErrorOut
from registry.openai_compat.service import error_answer
from registry.operations.controller import AdminController
from registry.prompts.controller import PromptController
from registry.prompts.fast_path import PromptFastPath
from registry.rollouts.controller import PromptRolloutController, RolloutController
from registry.runtime import Runtime
from registry.settings import Settings, get_settings
from registry.system.controller import SystemController
from registry.webhooks.controller import WebhookController

API_PREFIX = "/v1"
API_CONTROLLERS = [
    PromptController,
    ConfigController,
    ApiKeyController,
    AuditController,
    WebhookController,
    ChangeFeedController,
    ExperimentController,
    MetricController,
    EventController,
    ExposureController,
    UnitController,
    CompletionController,
    UsageController,
    BudgetController,
    SemanticCacheController,
    DatasetController,
    RunController,
    GateController,
    PromptRolloutController,
    RolloutController,
    AlertRuleController,
    AlertIncidentController,
    OpenAIController,
    AdminController,
]
# The OpenAI-compatible door's paths (and those below them): every error there, refusals before routing
# included, is OpenAI's error object.
OPENAI_PATHS = tuple(f"{API_PREFIX}{path}" for path in ("/chat/completions", "/completions", "/models"))
RUNTIME_STATE = "runtime"
TRACING_STATE = "tracing"


def openai_error(error: RegistryError, instance: str, request_id: str | None) -> ErrorOut:
    return error_answer(error, instance=instance, request_id=request_id)


OPENAI_SHAPE = ErrorShape(OPENAI_PATHS, openai_error)


def app_exception_handler(shape: ErrorShape) -> ExceptionHandler:
    """Errors no route handled (no route matches, a method it does not serve): the console's error page under its
    prefix, for a person in a browser (its own routes answer so already); problem+json, or ``shape``'s, elsewhere."""
    api_errors = exception_handler(shape)

    def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        path = request.url.path
        if path == CONSOLE_PREFIX or path.startswith(f"{CONSOLE_PREFIX}/"):
            return console_error(request, exc)
        return api_errors(request, exc)

    return exception_to_response


@dataclass(frozen=True)
class RoutedApp:
    """The Litestar app with its routes and documents, before a runtime serves it: ``handler`` is Litestar's own
    ASGI handler, which ``serve_with`` puts the fast paths and the request-context middleware in front of."""

    litestar: Litestar
    handler: ASGIApp


def create_app(settings: Settings | None = None, *, tracing: Tracing | None = None) -> Litestar:
    """``tracing`` defaults to what the ``OTEL_*`` variables configure (off unless an exporter is set)."""
    settings = settings or get_settings()
    return serve_with(route_app(settings.max_body_bytes), settings, tracing=tracing)


def route_app(max_body_bytes: int) -> RoutedApp:
    """The routes, handlers and documents, which no setting but the body limit changes.

    Parsing some three hundred handlers' signatures is most of what making an app costs; it is done here once,
    and an app served by one runtime after another (the tests') is routed only once.
    """
    api = ApiRouter(path=API_PREFIX, route_handlers=API_CONTROLLERS, before_request=authorize_request)
    app = Litestar(
        route_handlers=[SystemController, api, *console_routers()],
        template_config=console_template_config(),
        dependencies=COMMON_DEPENDENCIES,
        exception_handlers={Exception: app_exception_handler(OPENAI_SHAPE)},
        state=State(),
        on_startup=[start_runtime],
        on_shutdown=[stop_runtime, shutdown_tracing],
        request_max_body_size=max_body_bytes,
        request_class=RegistryRequest,
        openapi_config=api_openapi_config(__version__),
        logging_config=None,
    )
    ensure_scopes_declared(app)
    declare_problem_responses(app, API_PREFIX)
    document_operations(app, API_PREFIX, declared_scope)
    return RoutedApp(app, app.asgi_handler)


def serve_with(routed: RoutedApp, settings: Settings, *, tracing: Tracing | None = None) -> Litestar:
    """The routed app, served by a new runtime of ``settings``: its state, fast paths and middleware replace any
    an earlier runtime left (so one routed app serves one runtime at a time)."""
    if settings.max_body_bytes != routed.litestar.request_max_body_size:
        raise ValueError("the app was routed for another body limit")
    configure_logging(settings)
    runtime = Runtime.build(settings)
    tracing = tracing or Tracing.from_environ()
    runtime.completions.upstream.tracing = tracing
    app = routed.litestar
    app.state = State({RUNTIME_STATE: runtime, TRACING_STATE: tracing})
    handler = routed.handler
    if settings.fast_path:  # the routes apps call on every request, served in front of Litestar
        handler = OpenAIFastPath.in_front_of(app, handler, runtime, API_PREFIX)
        handler = CompletionFastPath.in_front_of(app, handler, runtime, API_PREFIX)
        handler = PromptFastPath.in_front_of(app, handler, runtime, API_PREFIX, tracer=tracing.tracer)
    app.asgi_handler = RequestContextMiddleware(
        handler,
        metrics=runtime.http_metrics,
        access_log=settings.access_log,
        state={RUNTIME_STATE: runtime},
        limits=RequestLimits(
            max_url_bytes=settings.max_url_bytes,
            max_headers=settings.max_request_headers,
            max_header_bytes=settings.max_header_bytes,
            body_read_timeout=settings.body_read_timeout_seconds,
            form_path_prefixes=(f"{CONSOLE_PREFIX}/",),
            upload_path_prefixes=(f"{API_PREFIX}/evals/datasets/",),
        ),
        error_shape=OPENAI_SHAPE,
    )
    app.asgi_handler = tracing.wrap(app.asgi_handler)  # the request span, outside all else; nothing when off
    return app


async def start_runtime(app: Litestar) -> None:
    await app.state[RUNTIME_STATE].start()


async def stop_runtime(app: Litestar) -> None:
    await app.state[RUNTIME_STATE].stop()


async def shutdown_tracing(app: Litestar) -> None:
    await app.state[TRACING_STATE].shutdown()


def declared_scope(handler: BaseRouteHandler) -> str | None:
    """The scope a handler names in ``opt``: what ``authorize_request`` checks and the OpenAPI shows."""
    scope = handler.opt.get(SCOPE_OPT)
    return scope.value if isinstance(scope, Scope) else None


def ensure_scopes_declared(app: Litestar) -> None:
    """Refuse to start if an API route forgot its scope: a new route cannot ship unguarded."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith(API_PREFIX):
            continue
        for handler in route.route_handlers:
            if getattr(handler, "http_methods", None) == {"OPTIONS"}:
                continue  # Litestar's automatic OPTIONS answer: lists methods, returns no data
            if declared_scope(handler) is None:
                raise RuntimeError(f"{route.path} ({handler.handler_name}) declares no scope in opt")
