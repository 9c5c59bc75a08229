"""The console's routes: every page controller and the static files, put together for the app factory.

Apart from ``controller`` so that the page controllers can use its helpers without it importing them back.
"""

from __future__ import annotations

from litestar import Router
from litestar.static_files import create_static_files_router

from registry.console.alerts_controller import AlertPagesController
from registry.console.controller import (
    CONSOLE_DIR,
    CONSOLE_PREFIX,
    ConsoleController,
    OperationsController,
    SignInController,
    admit_viewer,
    console_error,
)
from registry.console.evals_controller import EvalPagesController
from registry.console.experiments_controller import ExperimentPagesController
from registry.console.playground_controller import PlaygroundController
from registry.console.rollouts_controller import RolloutPagesController
from registry.lib.routing import ApiRouter


def console_routers() -> list[Router]:
    """The console's pages and its static files, for the app factory."""
    # ApiRouter: its OPTIONS answers list every method of a path (GET and POST /console/login).
    pages = ApiRouter(
        path="/",
        route_handlers=[
            SignInController,
            ConsoleController,
            OperationsController,
            ExperimentPagesController,
            EvalPagesController,
            PlaygroundController,
            RolloutPagesController,
            AlertPagesController,
        ],
        before_request=admit_viewer,
        exception_handlers={Exception: console_error},
        include_in_schema=False,
    )
    static = create_static_files_router(
        path=f"{CONSOLE_PREFIX}/static", directories=[CONSOLE_DIR / "static"], include_in_schema=False
    )
    return [pages, ApiRouter(path="/", route_handlers=[static], include_in_schema=False)]
