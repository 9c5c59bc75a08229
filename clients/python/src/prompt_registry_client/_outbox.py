"""Tracked events and exposures waiting to be sent, in batches, by a background worker.

Adding never blocks and never raises: when ``max_pending`` are waiting, new items are
dropped and counted; so are those added once the client is closed (nothing would send
them). Each event carries its idempotency key from the moment it is
tracked, so a batch sent again after a lost answer is counted once by the service.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Any, Literal

from prompt_registry_client._config import BatchPolicy

BatchKind = Literal["events", "exposures"]
KINDS: tuple[BatchKind, ...] = ("events", "exposures")
_REMEMBERED_EXPOSURES = 100_000


class Outbox:
    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._queues: dict[BatchKind, deque[dict[str, Any]]] = {kind: deque() for kind in KINDS}
        self._exposed: OrderedDict[tuple[str, int, str], None] = OrderedDict()
        self._lock = threading.Lock()
        self.dropped = 0  # not queued: the outbox was full
        self.rejected = 0  # refused by the service (invalid), not retried
        self.sent = 0
        self.closed = False  # the client closed: nothing sends what is added now

    def close(self) -> None:
        """Refuse what is added from now on (dropped and counted): the client that sends it has closed."""
        with self._lock:
            self.closed = True

    def add(self, kind: BatchKind, item: dict[str, Any]) -> bool:
        with self._lock:
            if self.closed or self._pending() >= self.policy.max_pending:
                self.dropped += 1
                return False
            self._queues[kind].append(item)
            return True

    def add_exposure(self, experiment: str, phase: int, unit: str, variant: str) -> bool:
        """Queue a unit's first exposure in this experiment phase; repeats are skipped (the service keeps the first)."""
        seen = (experiment, phase, unit)
        with self._lock:
            if seen in self._exposed:
                return False
            if self.closed or self._pending() >= self.policy.max_pending:
                self.dropped += 1  # not remembered: the unit's next exposure is queued once there is room
                return False
            self._exposed[seen] = None
            if len(self._exposed) > _REMEMBERED_EXPOSURES:
                self._exposed.popitem(last=False)
            self._queues["exposures"].append({"experiment": experiment, "unit": unit, "variant": variant})
            return True

    def take(self, kind: BatchKind) -> list[dict[str, Any]]:
        with self._lock:
            queue = self._queues[kind]
            return [queue.popleft() for _ in range(min(len(queue), self.policy.max_batch))]

    def give_back(self, kind: BatchKind, items: list[dict[str, Any]]) -> None:
        """Put a batch that could not be sent back at the front, in order."""
        with self._lock:
            self._queues[kind].extendleft(reversed(items))

    def full_batch_waiting(self) -> bool:
        with self._lock:
            return any(len(q) >= self.policy.max_batch for q in self._queues.values())

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending()

    def _pending(self) -> int:
        return sum(len(q) for q in self._queues.values())
