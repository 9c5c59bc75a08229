"""Closing the async client while its events are stuck on a registry that accepts connections and never answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from prompt_registry_client import AsyncRegistryClient, BatchPolicy, CachePolicy, RetryPolicy

from tests.waiting import eventually_async


@pytest.fixture
def silent_registry() -> Iterator[tuple[str, list[socket.socket]]]:
    """A port that accepts every connection and never answers; yields its URL and the connections so far."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    listener.close()
    for connection in accepted:
        connection.close()


async def test_aclose_waits_for_a_stuck_batch_no_longer_than_the_close_timeout(
    silent_registry: tuple[str, list[socket.socket]],
) -> None:
    url, accepted = silent_registry
    registry = AsyncRegistryClient(
        url,
        "prk_test",
        timeout=httpx.Timeout(3.0),  # each try of the batch waits this long for an answer that never comes
        retries=RetryPolicy(attempts=3),
        batches=BatchPolicy(flush_interval=0.01, close_timeout=0.1),
        cache=CachePolicy(watch_changes=False),
    )
    registry.track("user-1", "score", 1.0)

    async def on_its_way() -> bool:
        return bool(accepted)

    await eventually_async(on_its_way, "the batch on its way")
    await registry.aclose()
    assert len(accepted) == 1, "close gave up on the batch in flight instead of waiting out its tries"
    assert registry.pending_events == 1, "the abandoned batch is counted as not sent"
