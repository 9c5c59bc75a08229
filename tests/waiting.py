"""Waiting for what happens in the background, without making its speed part of the test.

A test asserts *that* something arrives (a promotion reaches a client, a replica
sees a change) and counts what it took: requests, attempts, events. How long it
took on this machine is no assertion: another test run on the same cores can make
anything slow. The patience below only keeps a broken build from hanging; it is
orders of magnitude above what any of these waits needs, so reaching it means
the thing never happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

PATIENCE_SECONDS = 60.0
_POLL_SECONDS = 0.005


def eventually(check: Callable[[], bool], what: str) -> None:
    """Return once ``check()`` holds; fail, naming ``what``, if it never does."""
    give_up = time.monotonic() + PATIENCE_SECONDS
    while not check():
        if time.monotonic() > give_up:
            raise AssertionError(f"{what}: never happened")
        time.sleep(_POLL_SECONDS)


async def eventually_async(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """``eventually`` for checks that await."""
    give_up = time.monotonic() + PATIENCE_SECONDS
    while not await check():
        if time.monotonic() > give_up:
            raise AssertionError(f"{what}: never happened")
        await asyncio.sleep(_POLL_SECONDS)
