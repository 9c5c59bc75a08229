"""Problem responses declared in the OpenAPI schema, so the schema lists every status a client can get.

Handlers declare their success responses; the error statuses are the same for
whole classes of routes (every ``/v1`` route can answer 401, 403, 429...), so
they are added here once instead of on each handler. A handler's own
``responses=`` wins over these defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import handle_schema_path_not_found
from litestar.datastructures import CacheControlHeader
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, Operation, Parameter, SecurityScheme
from litestar.routes import BaseRoute, HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from registry.lib.errors import PROBLEM_MEDIA_TYPE
from registry.lib.operation_docs import NAME_PARAMETER_DESCRIPTION, OPERATION_DESCRIPTIONS
from registry.lib.routing import ApiRouter


class FieldErrorOut(msgspec.Struct, kw_only=True):
    field: str
    message: str


class Problem(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details; some types add members (``reason``, ``retry_after``...)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldErrorOut] | None = None


_DESCRIPTIONS = {
    400: "Malformed JSON or an unusable parameter",
    401: "No API key, or one that is unknown, revoked or expired",
    403: "The API key lacks the scope this route requires",
    404: "The resource (or route) does not exist",
    405: "The route exists but not for this method",
    408: "The request body did not arrive in time; the connection is closed",
    409: "The change conflicts with the current state",
    413: "The request body is over the size limit",
    414: "The request target is over the size limit",
    415: "The request body is not JSON",
    422: "The request is well-formed but invalid; `errors` lists each field",
    429: "Over the rate limit or budget; retry after `Retry-After` seconds",
    431: "Too many request headers, or too large",
    503: "A dependency (database, backend) is unavailable; retry shortly",
}
# Refused before routing (RequestContextMiddleware), so any route can answer them.
_EVERY_ROUTE_STATUSES = (414, 431)
_API_STATUSES = (400, 401, 403, 404, 422, 429, 503, *_EVERY_ROUTE_STATUSES)
_WRITE_STATUSES = (409, 413, 415)
_BODY_STATUSES = (408,)
_SYSTEM_STATUSES = (400, 404, *_EVERY_ROUTE_STATUSES)
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Reads that answer a conflict: the results and export of an experiment that has not started (409
# experiment_state). Named here, beside the statuses every route shares, so the schema lists all of them.
_OPERATION_STATUSES: dict[str, tuple[int, ...]] = {
    "experimentResults": (409,),
    "exportExperimentUnits": (409,),
}


def problem_response(status: int) -> ResponseSpec:
    return ResponseSpec(
        Problem, description=_DESCRIPTIONS[status], media_type=PROBLEM_MEDIA_TYPE, generate_examples=False
    )


def declare_problem_responses(app: Litestar, api_prefix: str) -> None:
    """Add the problem statuses each route can answer to its handlers' OpenAPI responses."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            methods = set(handler.http_methods)
            statuses: tuple[int, ...] = (
                _API_STATUSES
                + (_WRITE_STATUSES if methods & _WRITE_METHODS else ())
                + (_BODY_STATUSES if methods & _BODY_METHODS else ())
                + _OPERATION_STATUSES.get(str(handler.operation_id), ())
                if route.path.startswith(api_prefix)
                else _SYSTEM_STATUSES
            )
            declared: dict[int, Any] = dict(handler.responses or {})
            handler.responses = {**{s: problem_response(s) for s in statuses}, **declared}


_SCHEMA_NOT_FOUND = handle_schema_path_not_found.__qualname__
SCHEMA_PATH = "/schema"

# --------------------------------------------------------------------------- the documentation site

# Swagger UI, vendored from the npm package swagger-ui-dist (LICENSE and NOTICE beside it), so the
# page works offline and does not change under us. To update: replace the folder and this version.
SWAGGER_UI_VERSION = "5.32.0"
DOCS_ASSETS_DIRECTORY = Path(__file__).resolve().parents[1] / "static" / f"swagger-ui-{SWAGGER_UI_VERSION}"
_ASSETS_UNDER_SCHEMA = f"/assets/swagger-ui-{SWAGGER_UI_VERSION}"
DOCS_ASSETS_PATH = f"{SCHEMA_PATH}{_ASSETS_UNDER_SCHEMA}"
BEARER_SCHEME = "apiKey"


def docs_page() -> SwaggerRenderPlugin:
    """The UI at ``/schema`` (and ``/schema/ui``), every asset served by this service."""
    return SwaggerRenderPlugin(
        js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS_PATH}/favicon-32x32.png'>",
        path="/ui",
    )


def api_openapi_config(version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="prompt-registry",
        version=version,
        description="Versioned prompts and model configs, A/B experiments and completions through vLLM. "
        "Every `/v1` operation takes an API key as `Authorization: Bearer prk_...` and names the scope it "
        "requires (`x-required-scope`); an `admin` key has every scope.",
        path=SCHEMA_PATH,
        openapi_router=SchemaRouter(SCHEMA_PATH),
        render_plugins=[docs_page()],
        components=Components(
            security_schemes={
                BEARER_SCHEME: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="prk_<id>_<secret>",
                    description="An API key: `registry keys create` makes one; `REGISTRY_API_KEY` for the CLI.",
                )
            }
        ),
    )


# --------------------------------------------------------------------------- operations


@dataclass
class DocumentedOperation(Operation):
    """An operation whose description comes from ``OPERATION_DESCRIPTIONS`` when its handler gives none,
    and whose ``{name}`` parameter says how to send a name containing ``/``."""

    def __post_init__(self) -> None:
        if self.description is None and self.operation_id is not None:
            self.description = OPERATION_DESCRIPTIONS.get(self.operation_id)
        for parameter in self.parameters or []:
            if isinstance(parameter, Parameter) and parameter.param_in == "path" and parameter.name == "name":
                parameter.description = NAME_PARAMETER_DESCRIPTION


@dataclass
class ScopedOperation(DocumentedOperation):
    """An API operation: bearer security, and the scope the route's check requires, in the description and
    as ``x-required-scope``. Subclassed once per scope (``operation_class_for``), since Litestar builds
    operations from the class alone."""

    scope: ClassVar[str]
    required_scope: str | None = field(default=None, metadata={"alias": "x-required-scope"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.required_scope = self.scope
        self.security = [{BEARER_SCHEME: []}]
        note = f"Requires the `{self.scope}` scope (an `admin` key has every scope)."
        if note not in (self.description or ""):
            self.description = f"{self.description}\n\n{note}" if self.description else note


_SCOPED_OPERATIONS: dict[str, type[ScopedOperation]] = {}


def operation_class_for(scope: str) -> type[ScopedOperation]:
    if scope not in _SCOPED_OPERATIONS:
        _SCOPED_OPERATIONS[scope] = type(f"{scope.title()}ScopedOperation", (ScopedOperation,), {"scope": scope})
    return _SCOPED_OPERATIONS[scope]


def document_operations(app: Litestar, api_prefix: str, scope_of: Callable[[HTTPRouteHandler], str | None]) -> None:
    """Give every operation its description, and each API operation its scope as ``scope_of`` reads it
    from the handler: the same place the request check reads it, so the two cannot disagree."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            scope = scope_of(handler) if route.path.startswith(api_prefix) else None
            handler.operation_class = DocumentedOperation if scope is None else operation_class_for(scope)


class SchemaRouter(ApiRouter):
    """The router of the schema and its documentation site, without Litestar's HTML 404 page.

    Litestar answers unknown paths under ``/schema`` (``/schema/swagger``) with an HTML page; left
    unrouted, they get the app's 404 problem document like any other unknown path.
    """

    def __init__(self, path: str) -> None:
        assets = create_static_files_router(
            _ASSETS_UNDER_SCHEMA,
            directories=[DOCS_ASSETS_DIRECTORY],
            include_in_schema=False,
            # The folder's name carries the version: a new one is a new URL, so browsers may keep these.
            cache_control=CacheControlHeader(public=True, max_age=86_400),
        )
        super().__init__(path, route_handlers=[assets], include_in_schema=False, dto=None, return_dto=None)

    def register(self, value: ControllerRouterHandler) -> list[BaseRoute]:
        if isinstance(value, HTTPRouteHandler) and getattr(value.fn, "__qualname__", "") == _SCHEMA_NOT_FOUND:
            return []
        return super().register(value)
