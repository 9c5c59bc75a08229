"""The doctor asks each backend for its model list and reads only the status: a backend whose body never ends
(or comes a byte at a time) does not hold the report."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import BackendSettings, Settings
from tests.operations.test_doctor import report

ENOUGH = 10_000  # chunks: the stream gives up here, so a probe that reads the body ends with an error


class EndlessBody(httpx.AsyncByteStream):
    def __init__(self) -> None:
        self.chunks_read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.chunks_read < ENOUGH:
            self.chunks_read += 1
            yield b'{"data": [' + b" " * 1024
        raise httpx.ReadError("the endless body was read")


async def test_a_backend_whose_model_list_never_ends_answers_without_its_body_read(
    settings: Settings, clean_database: AsyncEngine
) -> None:
    body = EndlessBody()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    backends = {"endless": BackendSettings(url="http://endless:8000")}
    checks = await report(clean_database, settings.model_copy(update={"backends": backends}), transport=transport)
    assert (checks["backends"].status, checks["backends"].reason) == ("pass", "all 1 backends answered (endless)")
    assert body.chunks_read == 0
