"""Work that must start when a stop is requested, before the server waits for open connections.

Servers stop gracefully by draining: they stop accepting, wait for every open
request to end, and only then run the app's shutdown hooks. A request that
never ends by itself (the change feed's event stream) would hold that wait
open forever, since the hook that ends it runs after it. So the runtime hooks
the stop signal itself: on SIGTERM or SIGINT it schedules ``callback`` on the
event loop, then hands the signal on to whatever handled it before (the
server's own handler, or the default action).

On SIGTERM the hand-over can wait ``drain_seconds``: the server keeps
accepting and serving while ``/ready`` answers 503, so load balancers take the
replica out before its listener closes. Two kinds of server handler are held
back: a plain signal handler (uvicorn) is called when the drain ends; an event
loop's handler (granian's workers register theirs with
``loop.add_signal_handler``, which would run as soon as this handler returns)
is removed, and the drain ends by raising SIGINT, which such servers treat as
the same stop. SIGINT (Ctrl-C) and a second SIGTERM stop at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DRAINED_SIGNAL = signal.SIGTERM


class StopSignalHook:
    """Installed on start, removed on stop; a no-op outside the main thread (signals cannot be hooked there)."""

    def __init__(self, callback: Callable[[], None], *, drain_seconds: float = 0.0) -> None:
        self._callback = callback
        self._drain_seconds = drain_seconds
        self._previous: dict[signal.Signals, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.TimerHandle | None = None
        self._loop_handler_removed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for number in STOP_SIGNALS:
            self._previous[number] = signal.getsignal(number)
            signal.signal(number, self._handle)

    def remove(self) -> None:
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None
        for number, previous in self._previous.items():
            if signal.getsignal(number) == self._handle:
                signal.signal(number, previous)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self._pass_on(number, frame)
            return
        loop.call_soon_threadsafe(self._callback)
        if number != DRAINED_SIGNAL or self._drain_seconds <= 0:
            self._pass_on(number, frame)
        elif self._draining is None:
            # Runs before the loop dispatches the signal to its own handler: removing that handler holds the stop
            # back. Removing it resets the signal to its default action, so this handler is put back.
            self._loop_handler_removed = loop.remove_signal_handler(number)
            signal.signal(number, self._handle)
            self._draining = loop.call_later(self._drain_seconds, self._end_drain, number)
        else:  # a second SIGTERM: stop now
            self._draining.cancel()
            self._end_drain(number)

    def _end_drain(self, number: int) -> None:
        if self._loop_handler_removed:
            signal.raise_signal(signal.SIGINT)
        else:
            self._pass_on(number, None)

    def _pass_on(self, number: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signal.Signals(number))
        if callable(previous):
            previous(number, frame)
        elif previous == signal.SIG_DFL:
            self.remove()
            os.kill(os.getpid(), number)
