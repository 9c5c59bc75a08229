"""The worker's own HTTP listener: ``/health``, ``/ready`` and ``/metrics`` beside its background jobs.

``registry worker`` serves no API, but orchestrators still probe it and
Prometheus still scrapes it (webhook deliveries, statistics lag). It serves
the same operational routes as the API, from the same runtime, on
``REGISTRY_WORKER_PORT``, in the worker's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from litestar import Litestar
from litestar.datastructures import State

from registry.deps import COMMON_DEPENDENCIES
from registry.lib.errors import exception_to_response
from registry.runtime import Runtime
from registry.system.controller import SystemController


def create_probe_app(runtime: Runtime) -> Litestar:
    """The operational routes alone; the runtime is started and stopped by the worker, not by this app."""
    return Litestar(
        route_handlers=[SystemController],
        dependencies=COMMON_DEPENDENCIES,
        exception_handlers={Exception: exception_to_response},
        state=State({"runtime": runtime}),
        openapi_config=None,
        logging_config=None,
    )


class ProbePortError(OSError):
    """The worker's probe listener could not listen on its address (the port is taken, or not allowed)."""


class _ProbeServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The worker handles stop signals itself and stops this server when it stops."""
        yield


class ProbeListener:
    """Serves ``create_probe_app(runtime)`` on ``host:port`` until ``stop``."""

    def __init__(self, runtime: Runtime, host: str, port: int) -> None:
        config = uvicorn.Config(
            create_probe_app(runtime),
            host=host,
            port=port,
            lifespan="off",
            access_log=False,
            log_level="warning",
            log_config=None,
        )
        self._server = _ProbeServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen, or raise if the port cannot be bound (a worker nobody can probe should not start)."""
        self._task = asyncio.create_task(self._serve(), name="probe-listener")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises the bind error, if it raised one
                raise RuntimeError(f"the worker's probe listener did not start on port {self._server.config.port}")
            await asyncio.sleep(0.01)

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:  # uvicorn logs why it cannot bind, then exits the process (status 3)
            config = self._server.config
            raise ProbePortError(f"the worker's probes cannot listen on {config.host}:{config.port}") from exc

    async def stop(self) -> None:
        if self._task is None or self._task.done():
            return
        self._server.should_exit = True
        await self._task
