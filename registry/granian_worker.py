"""The app as granian's worker processes build it: a stop that comes while it is built ends the worker.

A worker is forked with its server process's signal handlers, which only flag a stop in the server's state: a
SIGTERM that reached a worker while it built the app (seconds: most of it is imports) was lost, and the server
then waited for that worker forever. With the default action it ends; granian installs the worker's own handlers
once the app is built. Its own module, above the app factory, so that nothing is imported before the handlers are
reset and the imports keep running down.
"""

from __future__ import annotations

import signal
from typing import Any

from registry.lib.shutdown import STOP_SIGNALS


def create_app() -> Any:
    """``registry.app.create_app``, with the stop signals' default action while it runs."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_DFL)
    from registry.app import create_app as create_registry_app

    return create_registry_app()
