"""Answers that break off, do not decode or are not JSON raise the client's typed errors, never httpx's.

Streamed downloads (``export_experiment``, ``export_dataset``, ``eval_run_events``) read their body after the
call returned, so a body that breaks off there, or an error answer whose body breaks off, must be translated
as every other call's answer is. A ``httpx.MockTransport`` answers with bodies that fail part way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from prompt_registry_client import (
    CachePolicy,
    NotFound,
    RateLimited,
    RegistryClient,
    RetryPolicy,
    ServiceUnavailable,
)

Handler = Callable[[httpx.Request], httpx.Response]


class BreaksOff(httpx.SyncByteStream):
    """A body that sends ``first`` and then times out, as a connection dropped mid-download does."""

    def __init__(self, first: bytes) -> None:
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        yield self.first
        raise httpx.ReadTimeout("timed out reading the body")


def client_answering(handler: Handler) -> RegistryClient:
    return RegistryClient(
        "http://registry",
        "prk_key",
        transport=httpx.MockTransport(handler),
        cache=CachePolicy(watch_changes=False),
        retries=RetryPolicy(attempts=1),
    )


def test_an_export_whose_body_breaks_off_raises_service_unavailable_after_the_bytes_that_came() -> None:
    with client_answering(lambda request: httpx.Response(200, stream=BreaksOff(b"unit,variant\n"))) as client:
        received: list[bytes] = []
        with pytest.raises(ServiceUnavailable, match="broke off") as broken, client.export_experiment("t") as chunks:
            received.extend(chunks)
        assert received == [b"unit,variant\n"]
        assert isinstance(broken.value.__cause__, httpx.ReadTimeout)
        with pytest.raises(ServiceUnavailable, match="broke off"), client.export_dataset("cases") as chunks:
            b"".join(chunks)


def test_an_error_answer_whose_body_breaks_off_keeps_its_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "30"}, stream=BreaksOff(b'{"type": "/problems/'))

    with client_answering(handler) as client:
        with pytest.raises(RateLimited, match="HTTP 429") as refused, client.export_dataset("cases"):
            pass
        assert (refused.value.status, refused.value.retry_after) == (429, 30.0)
        with pytest.raises(RateLimited), client.export_experiment("t"):
            pass


def test_an_error_answer_that_is_not_json_raises_its_status_error_with_the_text() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="<html>no such page</html>", headers={"content-type": "text/html"})

    with client_answering(handler) as client:
        with pytest.raises(NotFound, match="no such page") as missing, client.export_dataset("cases"):
            pass
        assert (missing.value.status, missing.value.type) == (404, None)


def test_a_problem_answer_to_an_export_carries_its_type_and_detail() -> None:
    problem = {"type": "/problems/dataset_not_found", "title": "Not found", "detail": "no dataset 'cases'"}

    with client_answering(lambda request: httpx.Response(404, json=problem)) as client:
        with pytest.raises(NotFound) as missing, client.export_dataset("cases"):
            pass
        assert (missing.value.type, missing.value.detail) == ("dataset_not_found", "no dataset 'cases'")


def test_an_event_stream_that_breaks_off_or_sends_no_json_raises_service_unavailable() -> None:
    progress = b'event: progress\ndata: {"items_done": 1}\n\n'
    with client_answering(lambda request: httpx.Response(200, stream=BreaksOff(progress))) as client:
        events = client.eval_run_events(7)
        assert next(events) == ("progress", {"items_done": 1})
        with pytest.raises(ServiceUnavailable, match="broke off"):
            next(events)
    not_json = client_answering(lambda request: httpx.Response(200, content=b"event: done\ndata: <html>\n\n"))
    with not_json as client, pytest.raises(ServiceUnavailable, match="not JSON"):
        list(client.eval_run_events(7))


def test_a_management_answer_that_is_not_the_registrys_json_raises_service_unavailable() -> None:
    with client_answering(lambda request: httpx.Response(200, text="<html>a proxy's page</html>")) as client:
        with pytest.raises(ServiceUnavailable, match="answered something that is not JSON"):
            client.get_dataset("cases")
        with pytest.raises(ServiceUnavailable):
            client.experiment_results("t")
    a_list = client_answering(lambda request: httpx.Response(200, json=["not", "an", "object"]))
    with a_list as client, pytest.raises(ServiceUnavailable, match="did not answer as the registry does"):
        client.get_dataset("cases")


def test_an_answer_that_does_not_decode_raises_service_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        # Says gzip, is not: httpx raises DecodingError while reading it, a RequestError but no TransportError.
        return httpx.Response(200, content=b"not gzip at all", headers={"Content-Encoding": "gzip"})

    with client_answering(handler) as client:
        with pytest.raises(ServiceUnavailable, match="could not be read") as unreadable:
            client.get_dataset("cases")
        assert isinstance(unreadable.value.__cause__, httpx.DecodingError)
        with pytest.raises(ServiceUnavailable), client.export_dataset("cases") as chunks:
            b"".join(chunks)
