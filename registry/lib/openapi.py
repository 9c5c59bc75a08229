"""Problem responses declared in the OpenAPI schema, so the schema lists every status a client can get.

Handlers declare their success responses; the error statuses are the same for
whole classes of routes (every ``/v1`` route can answer 401, 403, 429...), so
they are added here once instead of on each handler. A handler's own
``responses=`` wins over these defaults.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi import ResponseSpec
from litestar.routes import HTTPRoute

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
    409: "The change conflicts with the current state",
    413: "The request body is over the size limit",
    415: "The request body is not JSON",
    422: "The request is well-formed but invalid; `errors` lists each field",
    429: "Over the rate limit or budget; retry after `Retry-After` seconds",
    503: "A dependency (database, backend) is unavailable; retry shortly",
}
_API_STATUSES = (400, 401, 403, 404, 422, 429, 503)
_WRITE_STATUSES = (409, 413, 415)
_SYSTEM_STATUSES = (400, 404)
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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
                _API_STATUSES + (_WRITE_STATUSES if methods & _WRITE_METHODS else ())
                if route.path.startswith(api_prefix)
                else _SYSTEM_STATUSES
            )
            declared: dict[int, Any] = dict(handler.responses or {})
            handler.responses = {**{s: problem_response(s) for s in statuses}, **declared}
