"""uvicorn's supervisor of several workers, handing a second stop signal on to them.

With ``REGISTRY_WORKERS`` over 1, uvicorn's supervisor sends SIGTERM to each worker on a stop and waits for it,
however long: a worker draining (``REGISTRY_SHUTDOWN_DRAIN_SECONDS``) serves on until its drain ends. A second
SIGTERM (or a SIGINT) must stop it at once (``registry.lib.shutdown``), but the supervisor queues the signals it
gets and stops reading its queue once it is stopping, so the signal never reached a worker. Here every stop signal
after the first is sent on to the workers, whose own handler ends the drain (as ``registry.granian_master`` does).
"""

from __future__ import annotations

import signal

from uvicorn.supervisors.multiprocess import Multiprocess

_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
_POLL_SECONDS = 0.2  # how soon a signal that came while waiting for the workers is sent on


class RegistryMultiprocess(Multiprocess):
    def join_all(self) -> None:
        for worker in self.processes:
            while worker.process.is_alive():
                worker.process.join(_POLL_SECONDS)
                if _STOP_SIGNALS.intersection(self.signal_queue):
                    self.signal_queue.clear()
                    self.terminate_all()  # SIGTERM again: a draining worker stops now
