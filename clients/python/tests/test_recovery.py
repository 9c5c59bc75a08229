"""Recovery from outages: stale copies say so, the change feed comes back fast, completions fall back.

Time is a fake clock and sleeps are recorded, never waited; the transport is the test seam.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from prompt_registry_client import CachePolicy, RegistryClient, RetryPolicy
from test_resilience import Script, resolved

QUICK = RetryPolicy(attempts=2, backoff=0.001, max_backoff=0.01)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def client(handler: Callable[[httpx.Request], httpx.Response], clock: FakeClock, **options: Any) -> RegistryClient:
    """A client on ``clock`` whose background work runs inline, so each call finishes all it started."""
    options.setdefault("retries", QUICK)
    options.setdefault("cache", CachePolicy(ttl=60, watch_changes=False))
    registry = RegistryClient("http://registry.test", "prk_test", transport=httpx.MockTransport(handler), **options)
    registry._core.clock = clock
    registry._spawn = lambda need: registry._run(need.flow)  # type: ignore[method-assign]
    return registry


# --------------------------------------------------------------------------- stale copies


def test_an_expired_copy_served_while_the_registry_is_unreachable_is_marked_stale() -> None:
    clock = FakeClock()
    script = Script(httpx.Response(200, json=resolved()))
    with client(script, clock) as registry:
        assert not registry.get_prompt("greet").stale
        script.answers = [httpx.ConnectError("refused")]
        clock.now += 30
        assert not registry.get_prompt("greet").stale, "a fresh copy needs no request"
        asked = len(script.requests)
        clock.now += 31  # older than its lifetime
        during = [registry.render("greet", {"name": "Ada"}) for _ in range(3)]
        clock.now += QUICK.cooldown + 1  # the outage lasts past the cooldown
        later = registry.get_prompt("greet")
        script.answers = [httpx.Response(304, headers={"ETag": "x"})]
        clock.now += QUICK.cooldown + 1
        registry.get_prompt("greet")  # serves, and revalidates: the registry is back
        back = registry.get_prompt("greet")
    assert asked == 1
    assert [r.stale for r in during] == [True, True, True]
    assert [r.text for r in during] == 3 * ["Hello Ada!"]
    assert later.stale, "still unreachable after the cooldown"
    assert not back.stale, "revalidated: fresh again"
