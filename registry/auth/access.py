"""Authentication and scope checks for every ``/v1`` route, run before the handler.

Each handler names its scope in ``opt={"scope": Scope.X}``; the app factory
refuses to start if a ``/v1`` handler names none, and this check fails closed.
It runs as the API router's ``before_request`` hook rather than as a Litestar
guard: guards receive a copy of the route handler on every request, which
costs more than the check itself on the fast path.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from registry.auth.keys import Scope, grants
from registry.lib.errors import ForbiddenError, RegistryError
from registry.runtime import runtime_of

SCOPE_OPT = "scope"


async def authorize_request(request: Request[Any, Any, Any]) -> None:
    handler = request.route_handler
    if handler.http_methods == {"OPTIONS"}:
        return  # Litestar's automatic OPTIONS answer lists the allowed methods and returns no data
    required = handler.opt.get(SCOPE_OPT)
    if not isinstance(required, Scope):
        raise RegistryError(f"route {handler.handler_name} declares no scope")
    authorization = None
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
            break
    runtime = runtime_of(request)
    principal = await runtime.key_verifier.authenticate(authorization)
    if not grants(principal.scopes, required):
        raise ForbiddenError(f"this API key lacks the '{required.value}' scope")
    runtime.rate_limiter.admit(principal)
    request.scope["user"] = principal
