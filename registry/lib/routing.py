"""A router whose automatic OPTIONS answers list every method served at a path.

Litestar 2 builds a route for each handler it registers and gives it an OPTIONS handler
that answers with *that* route's methods. A controller registers its handlers one by one,
so a path served by several handlers (``GET`` and ``POST /v1/prompts``) is rebuilt for each,
and every rebuilt route keeps the OPTIONS handler of the first one: ``Allow`` then lists the
first handler's method only (litestar-org/litestar#4169, fixed in Litestar 3).

``ApiRouter`` drops those automatic handlers from the routes it takes in and hands on, so
each route built from them, its own and the app's, makes a fresh one from its full set of methods.
"""

from __future__ import annotations

from litestar import Litestar, Router
from litestar.exceptions import MethodNotAllowedException, NotFoundException
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.routes import HTTPRoute
from litestar.types import Method, RouteHandlerMapItem, RouteHandlerType

_AUTOMATIC_OPTIONS = f"{HTTPRoute.create_options_handler.__qualname__}.<locals>.options_handler"


def is_automatic_options(handler: BaseRouteHandler) -> bool:
    """Whether ``handler`` is the OPTIONS answer Litestar adds to a route, not one the app declares."""
    return isinstance(handler, HTTPRouteHandler) and getattr(handler.fn, "__qualname__", "") == _AUTOMATIC_OPTIONS


def _without_automatic_options(handler_map: dict[str, RouteHandlerMapItem]) -> dict[str, RouteHandlerMapItem]:
    return {
        path: {method: handler for method, handler in handlers.items() if not is_automatic_options(handler)}
        for path, handlers in handler_map.items()
    }


class ApiRouter(Router):
    def __deepcopy__(self, memo: dict[int, object]) -> ApiRouter:
        """Itself: each is built for one app. Litestar copies a router it registers, so that one router may serve
        several apps; here that copied every handler a second time, a third of the app factory's time."""
        return self

    @classmethod
    def get_route_handler_map(cls, value: RouteHandlerType | Router) -> dict[str, RouteHandlerMapItem]:
        """What a registered controller or router serves, less the OPTIONS answers of its partial routes."""
        return _without_automatic_options(super().get_route_handler_map(value))

    @property
    def route_handler_method_map(self) -> dict[str, RouteHandlerMapItem]:
        """What this router serves, less its OPTIONS answers: a route rebuilt from it (here when a second
        controller shares a path, or in the app) makes its own."""
        return _without_automatic_options(super().route_handler_method_map)


# Collections whose ``{name}`` may hold ``/``, sent as ``%2F`` so the name stays one path segment.
NAMED_COLLECTIONS = ("/v1/prompts/", "/v1/configs/")


def encoded_name_path(app: Litestar, path: str, method: Method) -> str | None:
    """The path a client meant when it sent a name's slashes raw, if one of the app's routes serves it.

    ``/v1/prompts/support/summarize/render`` matches no route; joining the first two segments
    with ``%2F`` does. The shortest name that makes a served path is the likeliest one meant.
    """
    collection = next((prefix for prefix in NAMED_COLLECTIONS if path.startswith(prefix)), None)
    if collection is None:
        return None
    segments = path[len(collection) :].split("/")
    for name_length in range(2, len(segments) + 1):
        candidate = collection + "/".join(["%2F".join(segments[:name_length]), *segments[name_length:]])
        try:
            app.asgi_router.handle_routing(candidate, method)
        except NotFoundException:
            continue
        except MethodNotAllowedException:  # other methods are served there: the path itself is right
            return candidate
        return candidate
    return None
