"""The client's cache against a live registry: hits, background refresh, the change feed, outages."""

from __future__ import annotations

import threading
import time

import pytest
from prompt_registry_client import CachePolicy, RegistryClient, RetryPolicy, ServiceUnavailable

from tests.clients.conftest import Live, LiveFactory, Recorder, RecordingTransport, text
from tests.waiting import eventually

NO_FEED = CachePolicy(ttl=60, watch_changes=False)


def client_for(live: Live, recorder: Recorder, **options: object) -> RegistryClient:
    return RegistryClient(live.url, live.key, transport=RecordingTransport(recorder), **options)  # type: ignore[arg-type]


def test_a_cached_prompt_is_served_without_a_request(live: Live) -> None:
    live.prompt("greet", text("Hello {{ name }}!"))
    recorder = Recorder()
    with client_for(live, recorder, cache=NO_FEED) as registry:
        first = registry.get_prompt("greet")
        fetched = recorder.count("GET /v1/prompts/greet")
        for _ in range(1000):
            again = registry.get_prompt("greet")
        rendered = registry.render("greet", {"name": "Ada"})
    assert fetched == 1
    assert recorder.count("GET /v1/prompts/greet") == 1, "the cache answers without a request"
    assert again == first
    assert rendered.text == "Hello Ada!"


def test_an_expired_prompt_is_served_at_once_and_refreshed_in_the_background(live: Live) -> None:
    live.prompt("greet", text("v1 {{ name }}"), text("v2 {{ name }}"))
    recorder = Recorder()
    with client_for(live, recorder, cache=CachePolicy(ttl=0.2, watch_changes=False)) as registry:
        assert registry.get_prompt("greet").version == 1
        live.promote("greet", 2)
        time.sleep(0.25)
        caller = threading.get_ident()
        stale = registry.get_prompt("greet")
        eventually(lambda: registry.get_prompt("greet").version == 2, "the background refresh")
    assert stale.version == 1, "the expired copy is served at once"
    assert not stale.stale, "an expired copy is not an outage"
    assert recorder.tries("GET /v1/prompts/greet", thread=caller) == 1, "only the first get waited for a request"
    assert recorder.count("GET /v1/prompts/greet") == 2


def test_an_unchanged_prompt_is_revalidated_with_a_304(live: Live) -> None:
    live.prompt("greet", text("Hello {{ name }}!"))
    recorder = Recorder()
    with client_for(live, recorder, cache=CachePolicy(ttl=0.1, watch_changes=False)) as registry:
        first = registry.get_prompt("greet")
        time.sleep(0.15)
        registry.get_prompt("greet")
        eventually(lambda: recorder.statuses["GET /v1/prompts/greet 304"] == 1, "the revalidation")
        assert registry.get_prompt("greet") == first
    assert recorder.statuses["GET /v1/prompts/greet 200"] == 1


def test_a_promotion_and_a_rollback_reach_a_running_client_through_the_change_feed(live: Live) -> None:
    live.prompt("greet", text("v1 {{ name }}"), text("v2 {{ name }}"))
    recorder = Recorder()
    with client_for(live, recorder, cache=CachePolicy(ttl=600)) as registry:
        assert registry.get_prompt("greet").version == 1
        eventually(lambda: recorder.count("GET /v1/changes") == 1, "the change feed connecting")
        live.promote("greet", 2)
        eventually(lambda: registry.get_prompt("greet").version == 2, "the promotion reaching the client")
        live.ok(live.admin.post("/v1/prompts/greet/rollback", json={"reason": "v2 is worse"}))
        eventually(lambda: registry.get_prompt("greet").version == 1, "the rollback reaching the client")
    # The copies live 600 s: only the feed, connected once, can have told the client.
    assert recorder.count("GET /v1/changes") == 1


def test_with_the_service_stopped_the_cache_then_the_fallback_serve_else_a_typed_error(live: Live) -> None:
    live.prompt("greet", text("Hello {{ name }}!"))
    live.prompt("farewell", text("Bye {{ name }}!"))
    fast = RetryPolicy(attempts=2, backoff=0.01)
    recorder = Recorder()
    with client_for(live, recorder, cache=CachePolicy(ttl=0.1), retries=fast) as registry:
        registry.get_prompt("greet")
        live.stop()
        time.sleep(0.15)
        cached = registry.render("greet", {"name": "Ada"})
        time.sleep(0.05)
        still = registry.get_prompt("greet")
        chat = [{"role": "user", "content": "Bye, {{ name }}"}]
        fallback = registry.render("farewell", {"name": "Ada"}, fallback=chat)
        caller = threading.get_ident()
        tried_before = recorder.tries("GET /v1/prompts/farewell", thread=caller)
        with pytest.raises(ServiceUnavailable):
            registry.get_prompt("farewell")
        tried = recorder.tries("GET /v1/prompts/farewell", thread=caller) - tried_before
    assert cached.text == "Hello Ada!"
    assert still.version == 1
    assert fallback.fallback
    assert fallback.version is None
    assert fallback.to_messages() == [{"role": "user", "content": "Bye, Ada"}]
    assert tried == fast.attempts, "the error comes after the policy's tries, no more"


def test_a_copy_invalidated_while_the_service_is_away_is_still_served(live: Live) -> None:
    live.prompt("greet", text("Hello {{ name }}!"))
    fast = RetryPolicy(attempts=1)
    with RegistryClient(
        live.url, live.key, cache=NO_FEED, retries=fast, fallbacks={"greet": "Hi {{ name }}"}
    ) as registry:
        registry.get_prompt("greet")
        registry._core.prompts.invalidate_all()  # as a reconnect of the change feed does
        live.stop()
        served = registry.render("greet", {"name": "Ada"})
    assert served.text == "Hello Ada!"
    assert served.stale


def test_a_change_missed_while_disconnected_is_caught_when_the_feed_reconnects(
    live: Live, live_registry: LiveFactory
) -> None:
    live.prompt("greet", text("v1 {{ name }}"), text("v2 {{ name }}"))
    other_replica = live_registry()
    recorder = Recorder()
    with client_for(live, recorder, cache=CachePolicy(ttl=600)) as registry:
        assert registry.get_prompt("greet").version == 1
        # The feed's first connect revalidates the copy too: stopping the replica while that is under way would
        # leave the copy unverified, and then no reconnect would be needed to catch the change.
        eventually(lambda: recorder.statuses["GET /v1/prompts/greet 304"] >= 1, "the feed's first revalidation")
        live.stop()
        other_replica.promote("greet", 2)  # the client's replica is down: no change event reaches it
        eventually(lambda: recorder.tries("GET /v1/changes") >= 2, "the feed trying to reconnect")
        assert registry.get_prompt("greet").version == 1, "the last copy serves meanwhile"
        live.restart()
        # The copy lives 600 s: only the reconnected feed's resync can make the client ask again.
        eventually(lambda: registry.get_prompt("greet").version == 2, "the change caught after the reconnect")
    assert recorder.statuses["GET /v1/changes 200"] == 2, "connected, then reconnected once"
