"""Work that must start when a stop is requested, before the server waits for open connections.

Servers stop gracefully by draining: they stop accepting, wait for every open
request to end, and only then run the app's shutdown hooks. A request that
never ends by itself (the change feed's event stream) would hold that wait
open forever, since the hook that ends it runs after it. So the runtime hooks
the stop signal itself: on SIGTERM or SIGINT it schedules ``callback`` on the
event loop, then hands the signal on to whatever handled it before (the
server's own handler, or the default action).
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


class StopSignalHook:
    """Installed on start, removed on stop; a no-op outside the main thread (signals cannot be hooked there)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._previous: dict[signal.Signals, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        for number in STOP_SIGNALS:
            self._previous[number] = signal.getsignal(number)
            signal.signal(number, self._handle)

    def remove(self) -> None:
        for number, previous in self._previous.items():
            if signal.getsignal(number) == self._handle:
                signal.signal(number, previous)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._callback)
        previous = self._previous.get(signal.Signals(number))
        if callable(previous):
            previous(number, frame)
        elif previous == signal.SIG_DFL:
            self.remove()
            os.kill(os.getpid(), number)
