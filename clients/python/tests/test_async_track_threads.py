"""The async client's ``track()`` called from a thread without an event loop (a sync framework's worker).

Such a thread cannot start or wake the client's asyncio sender: the event is handed to the client's own
loop, or refused at once when the client has no open loop to send it from, never left queued unseen.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable

import httpx
import pytest
from prompt_registry_client import AsyncRegistryClient, BatchPolicy, CachePolicy

# A full batch is sent at once; the interval is far longer than any test waits, so only a wake-up sends.
ONE_AT_A_TIME = BatchPolicy(max_batch=1, flush_interval=3600.0)
ANSWER = {"accepted": 1, "duplicates": 0, "rejected": 0, "items": [{"index": 0, "status": "accepted"}]}


def in_a_thread(call: Callable[[], object]) -> BaseException | None:
    """Run ``call`` in a new thread (no event loop there); the exception it raised, if any."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return raised[0] if raised else None


async def test_an_event_tracked_from_a_thread_without_a_loop_is_sent_by_the_clients_loop() -> None:
    sent: list[dict[str, object]] = []
    arrived = asyncio.Event()

    def handle(request: httpx.Request) -> httpx.Response:
        sent.extend(json.loads(request.content)["events"])
        arrived.set()
        return httpx.Response(200, json=ANSWER)

    transport = httpx.MockTransport(handle)
    cache = CachePolicy(watch_changes=False)
    async with AsyncRegistryClient("http://registry", transport=transport, cache=cache, batches=ONE_AT_A_TIME) as c:
        error = in_a_thread(lambda: c.track("user-1", "thumbs_up", idempotency_key="from-a-worker"))
        assert error is None
        await asyncio.wait_for(arrived.wait(), 10)  # a bound for a broken client, not a timing
        assert [(e["unit"], e["idempotency_key"]) for e in sent] == [("user-1", "from-a-worker")]
        assert c.pending_events == 0


def test_tracking_from_a_thread_before_the_client_has_a_loop_raises_at_once_and_queues_nothing() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=ANSWER))
    client = AsyncRegistryClient("http://registry", transport=transport, cache=CachePolicy(watch_changes=False))
    error = in_a_thread(lambda: client.track("user-1", "thumbs_up"))
    assert isinstance(error, RuntimeError)
    assert "without a running event loop" in str(error)
    assert client.pending_events == 0
    asyncio.run(client.aclose())


def test_tracking_from_a_thread_once_the_clients_loop_is_closed_raises() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=ANSWER))

    async def make() -> AsyncRegistryClient:
        return AsyncRegistryClient("http://registry", transport=transport, cache=CachePolicy(watch_changes=False))

    client = asyncio.run(make())  # its loop is closed when asyncio.run returns
    with pytest.raises(RuntimeError, match="no open loop"):
        client.track("user-1", "thumbs_up")
    asyncio.run(client.aclose())
