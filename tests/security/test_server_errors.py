"""Requests the HTTP server itself refuses, over real sockets, under both servers (issue 17 item 7).

The app's limits (8 KiB target, 64 header lines, 16 KiB of headers) sit below the servers' own, so
what is over them gets the app's problem document. What a server cannot parse never reaches the
app: uvicorn answers it with a problem document (``GuardedHttpToolsProtocol``); granian (hyper)
answers a NUL in the request line (400), a target over 64 KiB (414) or over 100 header lines (431)
itself with an empty body, which no setting of granian changes.
"""

from __future__ import annotations

import contextlib
import json
import socket

import pytest

from tests.security.conftest import LiveServer

CLOSE = b"Connection: close\r\n\r\n"
NUL_IN_REQUEST_LINE = b"GET /he\x00alth HTTP/1.1\r\nHost: x\r\n" + CLOSE
PATH_OF_9K = b"GET /v1/prompts/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n" + CLOSE
PATH_OF_100K = b"GET /v1/prompts/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n" + CLOSE
HEADERS_80 = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(80)) + CLOSE
HEADERS_10K = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(10_000)) + CLOSE


def exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; (status, headers, body) of the answer, read until the server closes.

    Each request asks to close the connection after its answer (hyper drops one that half-closes first).
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered and closed before reading all
            sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def assert_problem(answer: tuple[int, dict[str, str], bytes], status: int) -> None:
    code, headers, body = answer
    assert code == status, body
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["status"] == status


SERVERS = [
    {"REGISTRY_SERVER": "granian", "REGISTRY_ACCESS_LOG": "false"},
    {"REGISTRY_SERVER": "uvicorn", "REGISTRY_ACCESS_LOG": "false"},
]


@pytest.mark.parametrize("live_server", SERVERS, ids=["granian", "uvicorn"], indirect=True)
def test_what_the_app_can_answer_is_a_problem_under_both_servers(live_server: LiveServer) -> None:
    assert_problem(exchange(live_server.url, PATH_OF_9K), 414)
    assert_problem(exchange(live_server.url, HEADERS_80), 431)


@pytest.mark.parametrize("live_server", SERVERS[1:], ids=["uvicorn"], indirect=True)
def test_uvicorn_answers_what_it_cannot_parse_with_a_problem(live_server: LiveServer) -> None:
    assert_problem(exchange(live_server.url, NUL_IN_REQUEST_LINE), 400)
    assert_problem(exchange(live_server.url, PATH_OF_100K), 400)
    assert_problem(exchange(live_server.url, HEADERS_10K), 431)


@pytest.mark.parametrize("live_server", SERVERS[:1], ids=["granian"], indirect=True)
def test_granian_refuses_what_it_cannot_parse_and_keeps_serving(live_server: LiveServer) -> None:
    """hyper's own answers (empty bodies): recorded so that a granian that lets the app answer is noticed."""
    assert exchange(live_server.url, NUL_IN_REQUEST_LINE)[0] == 400
    assert exchange(live_server.url, PATH_OF_100K)[0] == 414
    assert exchange(live_server.url, HEADERS_10K)[0] == 431
    status, _, body = exchange(live_server.url, b"GET /health HTTP/1.1\r\nHost: x\r\n" + CLOSE)
    assert (status, json.loads(body)) == (200, {"status": "ok"})
