"""The service as deployed, plus one bare JSON route: the ceiling of the same server and middleware."""

from __future__ import annotations

from litestar import Litestar, get

from registry.app import create_app


@get("/bench/bare", sync_to_thread=False, include_in_schema=False)
def bare() -> dict[str, bool]:
    return {"ok": True}


def create_bench_app() -> Litestar:
    app = create_app()
    app.register(bare)
    return app
