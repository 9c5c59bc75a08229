"""The service as deployed, plus bare routes: the ceilings of the same server and middleware.

``/bench/bare`` is a Litestar handler: what any route of the app costs at least.
``/bench/raw`` is answered in front of Litestar, where the resolve and render fast
path sits (``registry.prompts.fast_path``): the ceiling for the requests it serves.
``/bench/relay`` (when ``BENCH_RELAY_UPSTREAM`` names a vLLM) posts the request body to
its ``/v1/chat/completions`` and streams the bytes back unchanged: the floor of any
completion proxy on this server and HTTP client, with none of the registry's work.
It is a Litestar route (a ``Stream``, as any handler would answer); ``/bench/raw-relay``
is the same relay answered in front of Litestar, as ``/complete`` and the OpenAI-compatible
door are (``registry.lib.front``): the floor of a proxy that skips Litestar too.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from litestar import Litestar, Request, get, post
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream
from litestar.types import ASGIApp, Receive, Scope, Send

from registry.app import create_app
from registry.lib.disconnect import DisconnectWatch
from registry.lib.front import read_body, send_stream
from registry.lib.http import JsonResponse, RequestContextMiddleware

RAW_PATH = "/bench/raw"
RAW_RELAY_PATH = "/bench/raw-relay"
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]
RELAY_STATE = "bench_relay"  # the app's Relay, in its state
# A chunk with text (the first one carries only the role); vLLM writes compact JSON, the stand-in json.dumps'.
FIRST_TOKEN = re.compile(rb'"content": ?"[^"]')


@get("/bench/bare", sync_to_thread=False, include_in_schema=False)
def bare() -> dict[str, bool]:
    return {"ok": True}


class Relay:
    """One aiohttp session per worker, made on first use (inside the worker's event loop).

    After the upstream's last byte it adds an SSE comment with what it measured, as the registry records
    its own: from the handler's start to the first token and to the end of the upstream stream (ms).
    """

    def __init__(self, upstream: str) -> None:
        self.endpoint = f"{upstream.rstrip('/')}/v1/chat/completions"
        self.session: aiohttp.ClientSession | None = None

    async def stream(self, body: bytes, started: float) -> AsyncIterator[bytes]:
        if self.session is None:
            # Idle connections expire before the backend's keep-alive (uvicorn's 5 s), so none is reused as it closes.
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0))
        ttft = 0.0
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.endpoint, data=body, headers=headers) as response:
            response.raise_for_status()
            async for chunk in response.content.iter_any():
                if not ttft and FIRST_TOKEN.search(chunk):
                    ttft = time.monotonic() - started
                yield chunk
        latency = time.monotonic() - started
        yield f": relay ttft_ms={ttft * 1000:.3f} latency_ms={latency * 1000:.3f}\n\n".encode()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def relay_route(relay: Relay) -> HTTPRouteHandler:
    @post("/bench/relay", include_in_schema=False)
    async def bench_relay(request: Request[Any, Any, Any]) -> Stream:
        body = await request.body()
        return Stream(relay.stream(body, time.monotonic()), media_type="text/event-stream")

    return bench_relay


class RawBare:
    def __init__(self, app: ASGIApp, relay: Relay | None) -> None:
        self.app = app
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["path"] == RAW_PATH:
            scope["path_template"] = RAW_PATH
            await JsonResponse(b'{"ok":true}')(scope, receive, send)
            return
        if scope["type"] == ScopeType.HTTP and scope["path"] == RAW_RELAY_PATH and self.relay is not None:
            scope["path_template"] = RAW_RELAY_PATH
            body, _ = await read_body(receive, 1 << 20)
            watch = DisconnectWatch(receive)  # as the fast paths listen for a caller that leaves
            await send_stream(send, watch, _SSE, b"", self.relay.stream(body or b"", time.monotonic()))
            return
        await self.app(scope, receive, send)


def create_bench_app() -> Litestar:
    app = create_app()
    app.register(bare)
    relay = None
    if upstream := os.environ.get("BENCH_RELAY_UPSTREAM"):
        relay = Relay(upstream)
        app.register(relay_route(relay))
        app.state[RELAY_STATE] = relay
        app.on_shutdown.append(relay.close)
    outer = app.asgi_handler
    assert isinstance(outer, RequestContextMiddleware)
    outer.app = RawBare(outer.app, relay)
    return app
