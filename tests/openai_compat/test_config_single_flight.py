"""Requests for a ``config:`` model whose kept copy expired share one database read, and its failure."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from registry.lib.changes import ChangeBus
from registry.openai_compat.service import ConfigResolver, ModelTarget
from tests.completions.conftest import publish, unique
from tests.openai_compat.test_config_models import Clock, app, resolver_parts, served

__all__ = ["app", "resolver_parts", "served"]  # fixtures shared with test_config_models

CONCURRENT = 16
TTL = 10.0


async def test_concurrent_requests_after_a_config_expired_read_it_once_and_share_a_failed_read(
    served: httpx.AsyncClient, admin: dict[str, str], resolver_parts: dict[str, Any]
) -> None:
    await publish(served, admin, backend="fault", model=unique("ok"), prompt=None)
    clock = Clock()
    resolver = ConfigResolver(
        resolver_parts["live"], ChangeBus(None, "test"), ttl=TTL, degraded_ttl=1, max_entries=8, clock=clock
    )
    target = ModelTarget("config", "cfg")
    first = await resolver(target)

    clock.now += TTL + 1
    again = await asyncio.gather(*(resolver(target) for _ in range(CONCURRENT)))
    reads_while_up = resolver.reads
    resolver.sessionmaker = resolver_parts["dead"]
    clock.now += TTL + 1
    stale = await asyncio.gather(*(resolver(target) for _ in range(CONCURRENT)))

    assert again == stale == [first] * CONCURRENT
    assert reads_while_up == 2
    assert resolver.reads == 3  # one failed read for all, each then served the kept copy
