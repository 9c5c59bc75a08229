"""Slow-loris: sockets that trickle their headers must neither starve other clients nor stay open for ever."""

from __future__ import annotations

import socket
import statistics
import threading
import time

import httpx
import pytest

from tests.security.conftest import LiveServer
from tests.waiting import PATIENCE_SECONDS

SLOW_SOCKETS = 50
HEADER_READ_TIMEOUT = 2.0


def trickle_headers(url: str, stop: threading.Event, closed_after: list[float]) -> None:
    """Send a request's headers one byte a second until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        opened = time.monotonic()
        for byte in request:
            if stop.is_set():
                return
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(1.0)
                if sock.recv(1024) == b"":
                    closed_after.append(time.monotonic() - opened)
                    return
            except TimeoutError:
                continue  # the server is still waiting for the rest: send the next byte
            except OSError:
                closed_after.append(time.monotonic() - opened)
                return


@pytest.mark.parametrize(
    "live_server", [{"REGISTRY_HEADER_READ_TIMEOUT_SECONDS": str(HEADER_READ_TIMEOUT)}], indirect=True
)
def test_slow_header_senders_are_cut_off_and_others_are_served_meanwhile(live_server: LiveServer) -> None:
    stop = threading.Event()
    closed_after: list[float] = []
    threads = [
        threading.Thread(target=trickle_headers, args=(live_server.url, stop, closed_after), daemon=True)
        for _ in range(SLOW_SOCKETS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # every slow socket is connected and trickling
    latencies = []
    slow_open_when_served = []
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {live_server.admin_key}"}) as http:
        for _ in range(40):
            started = time.perf_counter()
            assert http.get("/v1/prompts").status_code == 200
            latencies.append(time.perf_counter() - started)
            slow_open_when_served.append(SLOW_SOCKETS - len(closed_after))
    # A hang guard far below the 200+ s a trickled request needs: what closes them in time is the server.
    deadline = time.monotonic() + PATIENCE_SECONDS
    while len(closed_after) < SLOW_SOCKETS and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    p50, worst = statistics.median(latencies) * 1000, max(latencies) * 1000
    print(
        f"slow-loris: {SLOW_SOCKETS} sockets, healthy p50 {p50:.1f} ms (max {worst:.1f} ms), "
        f"{len(closed_after)} closed by the server after {min(closed_after, default=0):.1f}-"
        f"{max(closed_after, default=0):.1f} s"
    )
    assert len(closed_after) == SLOW_SOCKETS
    # Served meanwhile, counted rather than timed: all 40 answered, the first with every slow socket held.
    assert slow_open_when_served[0] == SLOW_SOCKETS
