"""Closing a client while its events or refreshes wait on a registry that does not answer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from prompt_registry_client import AsyncRegistryClient, BatchPolicy, CachePolicy, RegistryClient, RetryPolicy

from tests.clients.conftest import Live, text
from tests.waiting import eventually, eventually_async


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


class HungAfterFirstFetch(httpx.HTTPTransport):
    """The registry answers the first prompt fetch, then never again: later ones time out after ``patience``."""

    def __init__(self, patience: float) -> None:
        super().__init__()
        self.patience = patience
        self.fetches = 0
        self.release = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.fetches > 1:
            self.release.wait(self.patience)
            raise httpx.ReadTimeout("the registry did not answer", request=request)
        return super().handle_request(request)


def test_close_does_not_wait_out_a_background_refresh_on_a_registry_that_does_not_answer(live: Live) -> None:
    live.prompt("dec6-refresh", text("v1"))
    transport = HungAfterFirstFetch(patience=3.0)
    registry = RegistryClient(
        live.url,
        live.key,
        transport=transport,
        retries=RetryPolicy(attempts=2, backoff=0.01),
        batches=BatchPolicy(close_timeout=0.1),
        cache=CachePolicy(ttl=0.0, watch_changes=False),  # every get after the first refreshes in the background
    )
    try:
        registry.get_prompt("dec6-refresh")
        assert registry.get_prompt("dec6-refresh").version == 1  # served at once; its refresh hangs
        eventually(lambda: transport.fetches == 2, "the background refresh on its way")
        registry.close()
        tries_when_closed = transport.fetches
    finally:
        transport.release.set()
    assert tries_when_closed == 2, "close gave up on the refresh instead of waiting out its second try"
