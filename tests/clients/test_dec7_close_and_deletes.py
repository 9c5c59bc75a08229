"""Closing a client wakes its change feed wherever it waits; deletes and POSTs retried after a lost answer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prompt_registry_client import (
    AsyncRegistryClient,
    BatchPolicy,
    CachePolicy,
    NotFound,
    RegistryClient,
    RetryPolicy,
    ServiceUnavailable,
)

from registry.app import create_app
from tests.clients.conftest import Live, Recorder, RecordingTransport, ThreadedServer, text
from tests.waiting import PATIENCE_SECONDS, eventually

NO_FEED = CachePolicy(watch_changes=False)
QUICK = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.01)
# A feed that would wait this long for its answer: a close that returned meanwhile woke it (no timeout did).
PATIENT_FEED = CachePolicy(feed_read_timeout=3600.0)


class Holding:
    """The registry, except that requests for ``path`` after the first ``answered`` are never answered: each
    waits until its client hangs up."""

    def __init__(self, app: Any, path: str, answered: int) -> None:
        self.app = app
        self.path = path
        self.answered = answered
        self.asked = 0
        self.hung_up = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            self.asked += 1
            if self.asked > self.answered:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.hung_up += 1
                return
        await self.app(scope, receive, send)


HoldingFactory = Callable[..., tuple[str, Holding]]


@pytest.fixture
def holding(live: Live) -> Iterator[HoldingFactory]:
    """Serve another instance of the live registry that holds ``path`` (after ``answered`` answers); its URL."""
    servers: list[ThreadedServer] = []

    def start(path: str, answered: int = 0) -> tuple[str, Holding]:
        held = Holding(create_app(live.settings), path, answered)
        servers.append(server := ThreadedServer(held))
        return server.start(), held

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


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


def closed_in_a_thread(close: Callable[[], None]) -> bool:
    """Whether ``close()`` returned (the patience only keeps a close that waits for the feed's answer from hanging)."""
    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    closer.join(PATIENCE_SECONDS)
    return not closer.is_alive()


def running(ident: int) -> bool:
    return any(thread.ident == ident for thread in threading.enumerate())


def test_close_wakes_a_feed_still_waiting_for_its_answer_and_leaves_no_thread_running(
    live: Live, holding: HoldingFactory
) -> None:
    live.prompt("dec7-held", text("v1"))
    url, held = holding("/v1/changes")
    registry = RegistryClient(url, live.key, cache=PATIENT_FEED)
    assert registry.get_prompt("dec7-held").version == 1  # cached: the feed connects, and is never answered
    eventually(lambda: held.asked == 1, "the feed asking")
    watcher = registry._watcher
    assert watcher is not None
    assert closed_in_a_thread(registry.close), "close waited for an answer the feed would never get"
    assert not watcher.is_alive(), "the feed's thread outlived the client's close"
    eventually(lambda: held.hung_up == 1, "the feed's connection closed")
    assert held.asked == 1, "the feed did not reconnect once closed"


def test_close_wakes_a_feed_waiting_for_its_answer_on_a_connection_of_the_app_s_transport(
    live: Live, holding: HoldingFactory
) -> None:
    """The app's transport pools the feed with the other requests: its connection may be one made before."""
    live.prompt("dec7-pooled", text("v1"))
    url, held = holding("/v1/changes")
    recorder = Recorder()
    registry = RegistryClient(url, live.key, transport=RecordingTransport(recorder), cache=PATIENT_FEED)
    registry.get_prompt("dec7-pooled")
    eventually(lambda: held.asked == 1, "the feed asking")
    watcher = registry._watcher
    assert watcher is not None
    assert closed_in_a_thread(registry.close), "close waited for an answer the feed would never get"
    assert not watcher.is_alive(), "the feed's thread outlived the client's close"
    eventually(lambda: held.hung_up == 1, "the feed's connection closed")


def test_close_wakes_a_feed_that_is_reading_its_events(live: Live) -> None:
    live.prompt("dec7-open", text("v1"))
    recorder = Recorder()
    registry = RegistryClient(live.url, live.key, transport=RecordingTransport(recorder), cache=PATIENT_FEED)
    registry.get_prompt("dec7-open")
    eventually(lambda: recorder.statuses["GET /v1/changes 200"] == 1, "the feed connecting")
    watcher = registry._watcher
    assert watcher is not None
    assert closed_in_a_thread(registry.close), "close waited for the feed's next event"
    assert not watcher.is_alive(), "the feed's thread outlived the client's close"
    assert recorder.tries("GET /v1/changes") == 1, "the feed did not reconnect once closed"


def test_close_cuts_off_a_batch_stuck_past_the_close_timeout_and_leaves_no_sender_running(
    silent_registry: tuple[str, list[socket.socket]],
) -> None:
    url, accepted = silent_registry
    registry = RegistryClient(
        url,
        "prk_test",
        timeout=httpx.Timeout(3600.0),  # the batch would wait this long for its answer
        retries=RetryPolicy(attempts=3, backoff=0.001),
        batches=BatchPolicy(flush_interval=0.01, close_timeout=0.05),
        cache=NO_FEED,
    )
    registry.track("user-1", "score", 1.0)
    eventually(lambda: bool(accepted), "the batch on its way")
    sender = registry._sender
    assert sender is not None
    assert closed_in_a_thread(registry.close), "close waited out the batch's answer"
    assert not sender.is_alive(), "the sender outlived the client's close"
    assert len(accepted) == 1, "the batch was not tried again once cut off"
    assert registry.pending_events == 1, "the batch cut off is counted as not sent"


def test_close_cuts_off_a_background_refresh_the_registry_never_answers(live: Live, holding: HoldingFactory) -> None:
    live.prompt("dec7-refresh", text("v1"))
    url, held = holding("/v1/prompts/dec7-refresh", answered=1)
    recorder = Recorder()
    registry = RegistryClient(
        url,
        live.key,
        transport=RecordingTransport(recorder),
        timeout=httpx.Timeout(3600.0),
        retries=RetryPolicy(attempts=2, backoff=0.001),
        batches=BatchPolicy(close_timeout=0.05),
        cache=CachePolicy(ttl=0.0, watch_changes=False),  # every get after the first refreshes in the background
    )
    registry.get_prompt("dec7-refresh")
    assert registry.get_prompt("dec7-refresh").version == 1  # served at once; its refresh is never answered
    eventually(lambda: held.asked == 2, "the background refresh asking")
    refresher = [ident for key, ident in recorder.attempts if key == "GET /v1/prompts/dec7-refresh"][-1]
    assert closed_in_a_thread(registry.close), "close waited out the refresh's answer"
    assert not running(refresher), "the refresh's thread outlived the client's close"
    eventually(lambda: held.hung_up == 1, "the refresh's connection closed")
    assert recorder.tries("GET /v1/prompts/dec7-refresh") == 2, "the refresh was not tried again once cut off"


# --------------------------------------------------------------------------- deletes whose first answer was lost


def first_answer_lost(method: str) -> Callable[[httpx.Request], bool]:
    """Drops the answer to the first ``method`` request only (the service did it; the client never hears)."""
    lost: list[httpx.Request] = []

    def lose(request: httpx.Request) -> bool:
        if request.method != method or lost:
            return False
        lost.append(request)
        return True

    return lose


def test_a_delete_webhook_whose_answer_was_lost_succeeds_on_its_retry(live: Live) -> None:
    recorder = Recorder()
    transport = RecordingTransport(recorder, lose_answer=first_answer_lost("DELETE"))
    with RegistryClient(live.url, live.key, transport=transport, cache=NO_FEED, retries=QUICK) as registry:
        webhook_id = registry.create_webhook("http://127.0.0.1:9/dec7", ["*"])["webhook"]["id"]
        assert registry.delete_webhook(webhook_id) is None
        assert list(registry.list_webhooks()) == []
    path = f"DELETE /v1/webhooks/{webhook_id}"
    assert (recorder.statuses[f"{path} 204"], recorder.statuses[f"{path} 404"]) == (1, 1), "deleted, then found gone"


def test_a_delete_gate_whose_answer_was_lost_succeeds_on_its_retry(live: Live) -> None:
    live.prompt("dec7-gated", text("{{ answer }}"))
    recorder = Recorder()
    transport = RecordingTransport(recorder, lose_answer=first_answer_lost("DELETE"))
    with RegistryClient(live.url, live.key, transport=transport, cache=NO_FEED, retries=QUICK) as registry:
        registry.push_dataset("dec7-cases", b'{"variables": {"answer": "y"}, "expected": "y"}\n')
        registry.set_gate("dec7-gated", "production", dataset="dec7-cases", min_pass_rate=0.5)
        assert registry.delete_gate("dec7-gated", "production") is None
        with pytest.raises(NotFound):
            registry.get_gate("dec7-gated", "production")
    assert recorder.count("DELETE /v1/prompts/dec7-gated/gates/production") == 2


def test_deleting_what_never_existed_still_raises_not_found_after_a_refusal_that_did_nothing(live: Live) -> None:
    """A 503 says the first try did nothing: the 404 of the retry is the truth, not a lost success."""
    tries: list[int] = []

    def busy_first(request: httpx.Request) -> httpx.Response:
        tries.append(1)
        if len(tries) == 1:
            return httpx.Response(503, json={"status": 503, "detail": "busy"}, headers={"Retry-After": "0"})
        with httpx.Client(base_url=live.url, headers=dict(request.headers)) as http:
            answer = http.request(request.method, request.url.path)
        return httpx.Response(answer.status_code, content=answer.content, headers=answer.headers)

    transport = httpx.MockTransport(busy_first)
    registry = RegistryClient(live.url, live.key, transport=transport, cache=NO_FEED, retries=QUICK)
    with registry, pytest.raises(NotFound) as missing:
        registry.delete_webhook(999_999)
    assert missing.value.type == "webhook_not_found"
    assert len(tries) == 2


class AsyncLosingTransport(httpx.AsyncHTTPTransport):
    """The real transport, dropping the answer of the first DELETE after the service has done it."""

    def __init__(self) -> None:
        super().__init__()
        self.deletes: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method == "DELETE":
            self.deletes.append(response.status_code)
            if len(self.deletes) == 1:
                await response.aclose()
                raise httpx.ReadError("the answer was lost on the way back", request=request)
        return response


async def test_the_async_client_s_delete_whose_answer_was_lost_also_succeeds_on_its_retry(live: Live) -> None:
    transport = AsyncLosingTransport()
    async with AsyncRegistryClient(live.url, live.key, transport=transport, cache=NO_FEED, retries=QUICK) as r:
        webhook_id = (await r.create_webhook("http://127.0.0.1:9/dec7-async", ["*"]))["webhook"]["id"]
        assert await r.delete_webhook(webhook_id) is None
        assert [w async for w in r.list_webhooks()] == []
    assert transport.deletes == [204, 404]


# --------------------------------------------------------------------------- POSTs are not sent twice


@pytest.mark.parametrize("status", [502, 504])
def test_a_post_a_proxy_gave_up_on_is_not_sent_again(status: int) -> None:
    """A 502 or 504 from a proxy may come after the service created the webhook: a retry would create a second."""
    posts: list[httpx.Request] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return httpx.Response(status, text="upstream timed out")

    transport = httpx.MockTransport(gateway)
    with RegistryClient("http://registry.test", "prk_test", transport=transport, cache=NO_FEED, retries=QUICK) as r:
        with pytest.raises(ServiceUnavailable):
            r.create_webhook("http://127.0.0.1:9/once", ["*"])
        with pytest.raises(ServiceUnavailable):
            r.ping_webhook(7)
    assert [request.method for request in posts] == ["POST", "POST"], "each sent once"


def test_a_delete_a_proxy_gave_up_on_is_retried_and_done_when_the_retry_finds_it_gone() -> None:
    answers = [httpx.Response(504, text="upstream timed out"), httpx.Response(404, json={"status": 404})]
    sent: list[httpx.Request] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return answers[len(sent) - 1]

    transport = httpx.MockTransport(gateway)
    with RegistryClient("http://registry.test", "prk_test", transport=transport, cache=NO_FEED, retries=QUICK) as r:
        assert r.delete_webhook(7) is None
    assert [request.method for request in sent] == ["DELETE", "DELETE"]


# --------------------------------------------------------------------------- idempotent calls whose answer was lost


def test_disabling_a_webhook_whose_answer_was_lost_is_retried_and_done(live: Live) -> None:
    """Disabling (or enabling) again changes nothing: a lost answer is retried instead of raised."""
    recorder = Recorder()
    transport = RecordingTransport(recorder, lose_answer=first_answer_lost("PATCH"))
    with RegistryClient(live.url, live.key, transport=transport, cache=NO_FEED, retries=QUICK) as registry:
        webhook_id = registry.create_webhook("http://127.0.0.1:9/dec7-disabled", ["*"])["webhook"]["id"]
        disabled = registry.disable_webhook(webhook_id)
        assert disabled["enabled"] is False
        assert [w["id"] for w in registry.list_webhooks(enabled=False)] == [webhook_id]
    assert recorder.statuses[f"PATCH /v1/webhooks/{webhook_id} 200"] == 2, "done, then found done"


@pytest.mark.parametrize(
    ("call", "method", "answer"),
    [
        (lambda r: r.enable_webhook(7), "PATCH", {"id": 7, "enabled": True}),
        (lambda r: r.disable_webhook(7), "PATCH", {"id": 7, "enabled": False}),
        (lambda r: r.cancel_eval_run(3), "POST", {"id": 3, "status": "cancelled"}),
        (
            lambda r: r.record_events([{"unit": "u", "metric": "m", "value": 1.0, "idempotency_key": "k1"}]),
            "POST",
            {"items": [{"status": "duplicate"}]},
        ),
    ],
    ids=["enable webhook", "disable webhook", "cancel eval run", "record events by key"],
)
def test_a_call_that_is_safe_to_repeat_is_retried_after_a_lost_answer(
    call: Callable[[RegistryClient], Any], method: str, answer: dict[str, Any]
) -> None:
    sent: list[httpx.Request] = []

    def lossy(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) == 1:
            raise httpx.ReadError("the answer was lost on the way back", request=request)
        return httpx.Response(200, json=answer)

    transport = httpx.MockTransport(lossy)
    with RegistryClient("http://registry.test", "prk_test", transport=transport, cache=NO_FEED, retries=QUICK) as r:
        assert call(r) == answer
    assert [request.method for request in sent] == [method, method]


def test_a_post_that_is_not_safe_to_repeat_raises_after_a_lost_answer_and_is_sent_once() -> None:
    sent: list[httpx.Request] = []

    def lossy(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ReadError("the answer was lost on the way back", request=request)

    transport = httpx.MockTransport(lossy)
    registry = RegistryClient("http://registry.test", "prk_test", transport=transport, cache=NO_FEED, retries=QUICK)
    with registry, pytest.raises(ServiceUnavailable):
        registry.redeliver(7, 42)
    assert len(sent) == 1, "a redelivery sends the event again: a retry would send it twice"
