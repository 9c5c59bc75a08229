"""The change feed of a client whose key the registry stops knowing, and of a registry gone for hours."""

from __future__ import annotations

from prompt_registry_client import AsyncRegistryClient, CachePolicy, RegistryClient, RetryPolicy

from tests.clients.conftest import AsyncRecordingTransport, LiveFactory, Recorder, RecordingTransport, text
from tests.waiting import eventually, eventually_async

QUICK = CachePolicy(ttl=600, feed_reconnect_delay=0.001, feed_fast_reconnects_for=0.0, feed_max_backoff=0.002)


def test_a_revoked_key_ends_the_feed_for_good_instead_of_reconnecting_forever(live_registry: LiveFactory) -> None:
    live = live_registry(feed_heartbeat_seconds=0.05)  # a revoked key's feed ends at its next heartbeat
    live.prompt("dec6-revoked", text("v1"))
    created = live.ok(live.admin.post("/v1/keys", json={"name": "dec6-revoked-app", "scopes": ["read"]}))
    recorder = Recorder()
    transport = RecordingTransport(recorder)
    with RegistryClient(live.url, created["key"], transport=transport, cache=QUICK) as registry:
        registry.get_prompt("dec6-revoked")
        eventually(lambda: recorder.statuses["GET /v1/changes 200"] == 1, "the feed connecting")
        live.ok(live.admin.delete(f"/v1/keys/{created['api_key']['id']}"))
        watcher = registry._watcher
        assert watcher is not None
        eventually(lambda: not watcher.is_alive(), "the feed giving up on a revoked key")
        served = registry.get_prompt("dec6-revoked")  # the cached copy still serves
    assert recorder.statuses["GET /v1/changes 401"] == 1, "one reconnect learns the key is gone, then no more"
    assert served.version == 1


async def test_the_async_client_also_stops_its_feed_on_a_revoked_key(live_registry: LiveFactory) -> None:
    live = live_registry(feed_heartbeat_seconds=0.05)
    live.prompt("dec6-revoked-async", text("v1"))
    created = live.ok(live.admin.post("/v1/keys", json={"name": "dec6-revoked-async", "scopes": ["read"]}))
    recorder = Recorder()
    transport = AsyncRecordingTransport(recorder)
    async with AsyncRegistryClient(live.url, created["key"], transport=transport, cache=QUICK) as registry:
        await registry.get_prompt("dec6-revoked-async")

        async def connected() -> bool:
            return recorder.statuses["GET /v1/changes 200"] == 1

        await eventually_async(connected, "the feed connecting")
        live.ok(live.admin.delete(f"/v1/keys/{created['api_key']['id']}"))
        watcher = registry._watcher
        assert watcher is not None

        async def stopped() -> bool:
            return watcher.done()

        await eventually_async(stopped, "the feed giving up on a revoked key")
    assert recorder.statuses["GET /v1/changes 401"] == 1


def test_the_feed_still_reconnects_after_more_failed_tries_than_a_float_can_double(live_registry: LiveFactory) -> None:
    live = live_registry()
    live.prompt("dec6-long-outage", text("v1"))
    recorder = Recorder()
    transport = RecordingTransport(recorder)
    with RegistryClient(live.url, live.key, transport=transport, cache=QUICK, retries=RetryPolicy(attempts=1)) as r:
        r._pause = lambda seconds: r._closing.is_set()  # type: ignore[method-assign]  # hours of pauses, at once
        r.get_prompt("dec6-long-outage")
        eventually(lambda: recorder.statuses["GET /v1/changes 200"] == 1, "the feed connecting")
        live.stop()
        eventually(lambda: recorder.tries("GET /v1/changes") > 1100, "the feed retrying through a long outage")
        live.restart()
        eventually(lambda: recorder.statuses["GET /v1/changes 200"] == 2, "the feed back after the outage")


def test_a_feed_refused_for_too_many_feeds_waits_as_long_as_retry_after_says(live_registry: LiveFactory) -> None:
    live = live_registry(feed_max_listeners_per_key=1)
    live.prompt("dec6-feeds", text("v1"))
    recorder = Recorder()
    pauses: list[float] = []
    with (
        RegistryClient(live.url, live.key, transport=RecordingTransport(recorder), cache=QUICK) as first,
        RegistryClient(live.url, live.key, transport=RecordingTransport(recorder), cache=QUICK) as second,
    ):
        first.get_prompt("dec6-feeds")
        eventually(lambda: recorder.statuses["GET /v1/changes 200"] == 1, "the first feed connecting")

        def pause(seconds: float) -> bool:
            pauses.append(seconds)
            return second._closing.wait()

        second._pause = pause  # type: ignore[method-assign]
        second.get_prompt("dec6-feeds")
        eventually(lambda: bool(pauses), "the second feed refused")
    assert recorder.statuses["GET /v1/changes 429"] == 1
    assert pauses[0] >= 60, "the pause after a 429 is at least its Retry-After (60 s)"
