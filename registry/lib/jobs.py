"""Periodic background work, and which processes run it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

Role = Literal["all", "api", "worker"]


@dataclass(frozen=True)
class PeriodicJob:
    """A coroutine run every ``interval`` seconds.

    ``shared`` jobs maintain data every replica shares (statistics, webhook
    deliveries, retention): one ``worker`` process runs them so request
    handling never waits behind them. The others flush what this process
    buffered or refresh what it caches, so every serving process runs them.
    """

    name: str
    interval: float
    run: Callable[[], Awaitable[object]]
    shared: bool = False
    run_at_shutdown: bool = True  # run once more when stopping, so buffered data is not lost

    def runs_in(self, role: Role) -> bool:
        return role == "all" or (role == "worker") == self.shared


def failure_is_logged(consecutive: int) -> bool:
    """Whether a job's ``consecutive``-th failure in a row is logged: the 1st, 2nd, 4th, 8th...

    A job runs every second or so; through an outage of the database each run fails the same way, and a
    traceback per run (several kilobytes, for each job) would bury everything else in the log.
    """
    return consecutive > 0 and consecutive & (consecutive - 1) == 0
