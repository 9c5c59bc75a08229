"""Authentication and scope checks for every ``/v1`` route, run before the handler.

Each handler names its scope in ``opt={"scope": Scope.X}``; the app factory
refuses to start if a ``/v1`` handler names none, and this check fails closed.
It runs as the API router's ``before_request`` hook rather than as a Litestar
guard: guards receive a copy of the route handler on every request, which
costs more than the check itself on the fast path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from litestar import Request

from registry.auth.keys import Scope, grants
from registry.auth.principal import Principal
from registry.lib.errors import ForbiddenError, RegistryError
from registry.lib.front import FrontRoute
from registry.runtime import Runtime, runtime_of

SCOPE_OPT = "scope"


async def authorize_request(request: Request[Any, Any, Any]) -> None:
    handler = request.route_handler
    if handler.http_methods == {"OPTIONS"}:
        return  # Litestar's automatic OPTIONS answer lists the allowed methods and returns no data
    required = handler.opt.get(SCOPE_OPT)
    if not isinstance(required, Scope):
        raise RegistryError(f"route {handler.handler_name} declares no scope")
    request.scope["user"] = await authorize(runtime_of(request), request.scope["headers"], required)


def required_scope(route: FrontRoute) -> Scope:
    """The scope a route served in front of Litestar requires: the one its Litestar handler declares."""
    required = route.opt.get(SCOPE_OPT)
    if not isinstance(required, Scope):
        raise RuntimeError(f"{route.path} declares no scope")
    return required


def authorization_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The request's (first) ``Authorization`` header, as the key check reads it."""
    for name, value in headers:
        if name == b"authorization":
            return value.decode("latin-1")
    return None


async def authorize(runtime: Runtime, headers: Iterable[tuple[bytes, bytes]], required: Scope) -> Principal:
    """The caller's key, checked for ``required`` and counted against its rate limit.

    Shared by the Litestar hook and the fast path (``registry.prompts.fast_path``).
    """
    principal = await runtime.key_verifier.authenticate(authorization_of(headers))
    if not grants(principal.scopes, required):
        raise ForbiddenError(f"this API key lacks the '{required.value}' scope")
    runtime.rate_limiter.admit(principal)
    return principal
