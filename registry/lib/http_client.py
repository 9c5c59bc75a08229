"""The process's one outgoing HTTP client: completion backends and webhook deliveries.

It is an aiohttp session rather than httpx: relaying a streamed completion
means one read per token, and aiohttp's C parser reads a 32-token stream with
about a quarter of the CPU httpx needs (measured side by side in this
repository, see BENCHMARKS.md). The session is created on first use, inside
the running event loop, as aiohttp requires, and closed with the runtime.
"""

from __future__ import annotations

import aiohttp

ERROR_HEAD_BYTES = 64 * 1024  # of an error answer: its message is near the start, and is cut to 500 characters


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The first ``limit`` bytes of ``response``'s body, and whether it went on past them (unread).

    ``response.read()`` holds a whole body in memory however long it is: a backend answering gigabytes, or a
    body that never ends before the timeout, would hold the process's memory.
    """
    body = bytearray()
    while len(body) <= limit:
        chunk = await response.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body), False
        body += chunk
    return bytes(body[:limit]), True


class HttpClient:
    def __init__(self, *, max_connections: int, keepalive_seconds: float) -> None:
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_seconds,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
