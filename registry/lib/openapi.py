"""Problem responses declared in the OpenAPI schema, so the schema lists every status a client can get.

Handlers declare their success responses; the error statuses are the same for
whole classes of routes (every ``/v1`` route can answer 401, 403, 429...), so
they are added here once instead of on each handler. A handler's own
``responses=`` wins over these defaults.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, Router
from litestar._openapi.plugin import handle_schema_path_not_found
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.routes import BaseRoute, HTTPRoute
from litestar.types import ControllerRouterHandler

from registry.lib.errors import PROBLEM_MEDIA_TYPE


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


class SchemaRouter(Router):
    """The router of the schema and its documentation site, without Litestar's HTML 404 page.

    Litestar answers unknown paths under ``/schema`` (``/schema/swagger``) with an HTML page; left
    unrouted, they get the app's 404 problem document like any other unknown path.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, route_handlers=[], include_in_schema=False, dto=None, return_dto=None)

    def register(self, value: ControllerRouterHandler) -> list[BaseRoute]:
        if isinstance(value, HTTPRouteHandler) and getattr(value.fn, "__qualname__", "") == _SCHEMA_NOT_FOUND:
            return []
        return super().register(value)
