"""The service as deployed, plus two bare JSON routes: the ceilings of the same server and middleware.

``/bench/bare`` is a Litestar handler: what any route of the app costs at least.
``/bench/raw`` is answered in front of Litestar, where the resolve and render fast
path sits (``registry.prompts.fast_path``): the ceiling for the requests it serves.
"""

from __future__ import annotations

from litestar import Litestar, get
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from registry.app import create_app
from registry.lib.http import JsonResponse, RequestContextMiddleware

RAW_PATH = "/bench/raw"


@get("/bench/bare", sync_to_thread=False, include_in_schema=False)
def bare() -> dict[str, bool]:
    return {"ok": True}


class RawBare:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["path"] == RAW_PATH:
            scope["path_template"] = RAW_PATH
            await JsonResponse(b'{"ok":true}')(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_bench_app() -> Litestar:
    app = create_app()
    app.register(bare)
    outer = app.asgi_handler
    assert isinstance(outer, RequestContextMiddleware)
    outer.app = RawBare(outer.app)
    return app
