"""Granian's server process, handing a second stop signal on to its workers.

On SIGTERM granian's server process sends SIGTERM to each worker and waits for it, however long: a worker draining
(``REGISTRY_SHUTDOWN_DRAIN_SECONDS``) serves on until its drain ends. A second SIGTERM (or a SIGINT) must stop it at
once (``registry.lib.shutdown``), but the server process only flagged a stop it was already making, so the signal
never reached a worker: an orchestrator that sent SIGTERM twice, or an operator's Ctrl-C after it, waited out the
drain. Here every stop signal after the first is sent on to the workers, whose own handler ends the drain.
"""

from __future__ import annotations

from typing import Any

from granian.server import MPServer


class RegistryGranian(MPServer):
    """Granian's server with worker processes (what ``granian.Granian`` is on a Python with the GIL)."""

    _stops_asked = 0

    def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
        self._stops_asked += 1
        if self._stops_asked > 1:
            for worker in list(self.wrks):
                worker.terminate()  # type: ignore[no-untyped-call]  # SIGTERM: a draining worker stops now
        super().signal_handler_interrupt(*args, **kwargs)  # type: ignore[no-untyped-call]
