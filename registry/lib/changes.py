"""Change notifications: local cache invalidation now, other replicas through Redis.

Services record changes on the session (``record_change``); they are published
only after the transaction commits, so no replica re-reads and caches a state
that was later rolled back. Without Redis, the transaction also appends them to
the database's change log, which the other processes read
(``registry.db.change_log``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Literal

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from registry.lib.logging import error_text

logger = structlog.get_logger("registry.changes")

ChangeKind = Literal["prompt", "config", "api_key", "experiment", "reset"]


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    name: str
    action: str


RESET = Change("reset", "*", "resync")
ChangeHandler = Callable[[Change], None]


def record_change(session: AsyncSession, change: Change) -> None:
    """Queue ``change`` for publication once ``session`` commits."""
    session.info.setdefault("changes", []).append(change)


@contextlib.asynccontextmanager
async def savepoint(session: AsyncSession) -> AsyncIterator[None]:
    """``session.begin_nested()`` whose recorded changes go with it when it rolls back: what it undid must not
    be announced when the transaction around it commits."""
    recorded = len(session.info.get("changes", []))
    try:
        async with session.begin_nested():
            yield
    except BaseException:
        del session.info.get("changes", [])[recorded:]
        raise


def pending_changes(session: AsyncSession) -> list[Change]:
    changes: list[Change] = session.info.pop("changes", [])
    return changes


class ChangeBus:
    """Fans changes out to in-process handlers and, with Redis, to every replica.

    ``connected`` is false while Redis is configured but the subscription is down:
    caches then shorten their lifetime, since invalidations may be missed. A
    ``reset`` change is delivered after every (re)subscription for the same reason.
    """

    def __init__(self, redis: Redis | None, channel: str) -> None:
        self._redis = redis
        self._channel = channel
        self._origin = uuid.uuid4().hex
        self._handlers: list[ChangeHandler] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.connected = redis is None

    @property
    def origin(self) -> str:
        """This bus's id: a change it published itself is not delivered to it again."""
        return self._origin

    @property
    def shared(self) -> bool:
        """Whether published changes reach other processes through Redis (else the change log carries them)."""
        return self._redis is not None

    def subscribe(self, handler: ChangeHandler) -> None:
        self._handlers.append(handler)

    def unsubscribe(self, handler: ChangeHandler) -> None:
        with contextlib.suppress(ValueError):
            self._handlers.remove(handler)

    def deliver(self, change: Change) -> None:
        """Hand a change that another process published (read from the change log) to this process's handlers."""
        self._dispatch(change)

    def _dispatch(self, change: Change) -> None:
        for handler in list(self._handlers):
            try:
                handler(change)
            except Exception:
                logger.exception("change handler failed", change=asdict(change))

    async def publish(self, change: Change) -> None:
        self._dispatch(change)
        if self._redis is None:
            return
        message = json.dumps({"origin": self._origin, **asdict(change)})
        try:
            await self._redis.publish(self._channel, message)
        except (RedisError, OSError) as exc:
            logger.warning("could not publish change; other replicas rely on cache expiry", error=error_text(exc))

    async def start(self) -> None:
        if self._redis is not None and self._task is None:
            self._task = asyncio.create_task(self._listen(self._redis), name="change-bus")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        # A redis read with a timeout can swallow one cancellation (Python 3.11), so insist.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()

    async def _listen(self, redis: Redis) -> None:
        delay = 0.1
        while not self._stopping:
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self.connected = True
                delay = 0.1
                self._dispatch(RESET)
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        await pubsub.ping()  # notices a dead connection while idle
                    elif message["type"] == "message":
                        self._receive(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.connected:
                    logger.warning("change subscription lost; caches use their short lifetime", error=error_text(exc))
                self.connected = False
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _receive(self, data: bytes | str) -> None:
        try:
            payload = json.loads(data)
            if payload.pop("origin") == self._origin:
                return
            self._dispatch(Change(**payload))
        except (ValueError, TypeError, KeyError):
            logger.warning("ignored a malformed change message")
