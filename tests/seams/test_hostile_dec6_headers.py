"""Request headers a careless or hostile client sends, as the app receives them from the server."""

from __future__ import annotations

from typing import Any

from tests.conftest import AppClient, http_scope


async def sent_headers(app: Any, headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The headers the app answers ``GET /health`` with."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(http_scope("GET", "/health", [(b"host", b"testserver"), *headers]), receive, send)
    return dict(sent[0]["headers"])


async def test_a_request_id_ending_in_a_newline_is_replaced_not_echoed(client: AppClient) -> None:
    """The id's pattern ended in ``$``, which also matches before a final newline: 'abc\\n' was taken as the
    request's id and written back as a response header (and into the logs and usage records) with its newline."""
    kept = await sent_headers(client.app, [(b"x-request-id", b"abc-1")])
    replaced = await sent_headers(client.app, [(b"x-request-id", b"abc-1\n")])

    assert kept[b"x-request-id"] == b"abc-1"
    assert b"\n" not in replaced[b"x-request-id"]
    assert replaced[b"x-request-id"] != b"abc-1"
