"""Recovery from outages: stale copies say so, the change feed comes back fast, completions fall back.

Time is a fake clock and sleeps are recorded, never waited; the transport is the test seam.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pytest
from prompt_registry_client import (
    AsyncRegistryClient,
    CachePolicy,
    CompletionBackend,
    Forbidden,
    RegistryClient,
    RetryPolicy,
    ServiceUnavailable,
    VariablesInvalid,
)
from prompt_registry_client._core import FeedReconnects
from test_resilience import Script, problem, resolved

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


# --------------------------------------------------------------------------- the change feed


FEED = CachePolicy(ttl=600, feed_reconnect_delay=0.5, feed_fast_reconnects_for=60, feed_max_backoff=30)
HELLO = b'event: hello\ndata: {"at": "2026-01-01T00:00:00Z"}\n\n'


def test_reconnect_delays_stay_under_a_second_until_the_registry_has_been_down_for_long() -> None:
    clock = FakeClock()
    reconnects = FeedReconnects(FEED, clock, rand=lambda: 1.0)
    delays: list[float] = []
    while clock.now < 1000 + 120:
        delays.append(reconnects.after_drop(None))
        clock.now += delays[-1]
    quick = [d for d in delays if d <= FEED.feed_reconnect_delay]
    assert len(quick) == 120, "one every half second for the first 60 s"
    assert delays[120:126] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0], "then they double"
    assert max(delays) == FEED.feed_max_backoff
    reconnects.connected()
    assert reconnects.after_drop(None) == FEED.feed_reconnect_delay, "up again: quick again"
    jittered = FeedReconnects(FEED, clock, rand=lambda: 0.0)
    assert jittered.after_drop(None) == FEED.feed_reconnect_delay / 2


def test_a_feed_the_registry_refuses_is_not_retried_quickly() -> None:
    reconnects = FeedReconnects(FEED, FakeClock(), rand=lambda: 1.0)
    refused = reconnects.after_drop(Forbidden("the key lacks the scope", status=403))
    assert refused > FEED.feed_reconnect_delay


def test_after_an_outage_the_feed_reconnects_within_a_second_and_every_cached_prompt_is_revalidated() -> None:
    clock = FakeClock()
    back_at = clock.now + 8.0  # the registry is down for 8 s after the feed's first connection ends
    cached = threading.Event()
    hellos: list[float] = []
    feed_tries: list[float] = []
    revalidated: list[tuple[str, int]] = []  # (prompt, connections of the feed so far)

    def registry_side(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[1]
        if name == "changes":
            assert cached.wait(10)
            feed_tries.append(clock.now)
            if hellos and clock.now < back_at:
                raise httpx.ConnectError("refused", request=request)
            hellos.append(clock.now)
            return httpx.Response(200, content=HELLO, headers={"content-type": "text/event-stream"})
        if request.headers.get("If-None-Match"):
            revalidated.append((name, len(hellos)))
            return httpx.Response(304, headers={"ETag": f'"{name}"'})
        return httpx.Response(200, json=resolved(name=name), headers={"ETag": f'"{name}"'})

    pauses: list[float] = []

    def pause(seconds: float) -> bool:
        pauses.append(seconds)
        clock.now += seconds
        return len(hellos) == 2  # the reconnect after the outage was the last one to watch

    with client(registry_side, clock, cache=FEED) as registry:
        registry._pause = pause  # type: ignore[method-assign]
        for name in ("greet", "farewell", "summary"):
            registry.get_prompt(name)
        cached.set()
        assert registry._watcher is not None
        registry._watcher.join(10)
        assert not registry._watcher.is_alive()
    assert hellos[1] - back_at < 1.0, "reconnected within a second of the registry's return"
    assert len(feed_tries) == len(pauses), "one try after each pause"
    assert all(FEED.feed_reconnect_delay / 2 <= p <= FEED.feed_reconnect_delay for p in pauses)
    assert sorted(name for name, connections in revalidated if connections == 2) == ["farewell", "greet", "summary"]


async def test_the_async_client_s_feed_also_reconnects_within_a_second_and_revalidates_every_copy() -> None:
    clock = FakeClock()
    back_at = clock.now + 3.0
    cached = asyncio.Event()
    hellos: list[float] = []
    revalidated: list[tuple[str, int]] = []

    async def registry_side(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[1]
        if name == "changes":
            await cached.wait()
            if hellos and clock.now < back_at:
                raise httpx.ConnectError("refused", request=request)
            hellos.append(clock.now)
            return httpx.Response(200, content=HELLO, headers={"content-type": "text/event-stream"})
        if request.headers.get("If-None-Match"):
            revalidated.append((name, len(hellos)))
            return httpx.Response(304, headers={"ETag": f'"{name}"'})
        return httpx.Response(200, json=resolved(name=name), headers={"ETag": f'"{name}"'})

    pauses: list[float] = []

    async def pause(seconds: float) -> bool:
        pauses.append(seconds)
        clock.now += seconds
        return len(hellos) == 2

    transport = httpx.MockTransport(registry_side)
    async with AsyncRegistryClient("http://registry.test", "prk_test", transport=transport, cache=FEED) as registry:
        registry._core.clock = clock
        registry._pause = pause  # type: ignore[method-assign]
        for name in ("greet", "farewell"):
            await registry.get_prompt(name)
        cached.set()
        assert registry._watcher is not None
        await asyncio.wait_for(registry._watcher, 10)
        while registry._background:
            await asyncio.gather(*registry._background.values())
    assert hellos[1] - back_at < 1.0
    assert all(p <= FEED.feed_reconnect_delay for p in pauses)
    assert sorted(name for name, connections in revalidated if connections == 2) == ["farewell", "greet"]


# --------------------------------------------------------------------------- completions without the registry


def backend_answer(text: str) -> httpx.Response:
    """An OpenAI-compatible chat completion."""
    return httpx.Response(
        200,
        json={
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
        },
    )


def test_a_completion_falls_back_to_the_app_s_callable_when_the_registry_is_unreachable() -> None:
    script = Script(httpx.ConnectError("refused"))
    asked: list[tuple[str, dict[str, Any]]] = []

    def canned(name: str, variables: Mapping[str, Any]) -> str:
        asked.append((name, dict(variables)))
        return f"Sorry {variables['name']}, later."

    with client(script, FakeClock()) as registry:
        completion = registry.complete("greet", {"name": "Ada"}, fallback=canned)
        tried = len(script.requests)
        registry.complete("greet", {"name": "Ada"}, fallback=canned)
        assert len(script.requests) == tried, "found unreachable moments ago: the fallback answers at once"
        with pytest.raises(ServiceUnavailable):
            registry.complete("greet", {"name": "Ada"})
    assert completion.fallback_used
    assert (completion.text, completion.prompt, completion.version, completion.config) == (
        "Sorry Ada, later.",
        "greet",
        None,
        None,
    )
    assert asked == 2 * [("greet", {"name": "Ada"})]
    assert len(script.requests) == 2 * QUICK.attempts, "without a fallback the call waits for the registry"


def test_a_completion_falls_back_to_a_backend_with_the_cached_prompt_rendered_locally() -> None:
    sent_to_backend: list[httpx.Request] = []
    registry_up = [True]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "backend.test":
            sent_to_backend.append(request)
            return backend_answer("Hi Ada!")
        if not registry_up[0]:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=resolved())

    backend = CompletionBackend(url="http://backend.test", model="small", api_key="sk-own", params={"temperature": 0})
    with client(handler, FakeClock()) as registry:
        registry.get_prompt("greet")
        registry_up[0] = False
        completion = registry.complete("greet", {"name": "Ada"}, max_tokens=8, fallback=backend)
    assert completion.fallback_used
    assert (completion.text, completion.version, completion.finish_reason) == ("Hi Ada!", 1, "stop")
    assert completion.usage.total_tokens == 6
    [request] = sent_to_backend
    assert request.url.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer sk-own", "the registry's key never goes to the backend"
    assert json.loads(request.content) == {
        "model": "small",
        "messages": [{"role": "user", "content": "Hello Ada!"}],
        "temperature": 0,
        "max_tokens": 8,
    }


def test_a_fallback_does_not_hide_the_caller_s_own_errors() -> None:
    script = Script(problem(422, "variables_invalid", errors=[{"field": "variables.name", "message": "is required"}]))
    with client(script, FakeClock()) as registry, pytest.raises(VariablesInvalid):
        registry.complete("greet", {}, fallback=lambda name, variables: "never")


async def test_the_async_client_s_completion_falls_back_too() -> None:
    async def canned(name: str, variables: Mapping[str, Any]) -> str:
        return f"later, {variables['name']}"

    transport = httpx.MockTransport(Script(httpx.ConnectError("refused")))
    async with AsyncRegistryClient("http://registry.test", transport=transport, retries=QUICK) as registry:
        completion = await registry.complete("greet", {"name": "Ada"}, fallback=canned)
        with pytest.raises(ServiceUnavailable):
            await registry.complete("greet", {"name": "Ada"})
    assert (completion.text, completion.fallback_used) == ("later, Ada", True)
