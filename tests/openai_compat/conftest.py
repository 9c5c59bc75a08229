"""The registry on a real port with the stand-in backend, and the official OpenAI SDK pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.completions.conftest import (  # noqa: F401 - fixtures shared with the completion tests
    RegistryFactory,
    backend,
    closed_port_url,
    fault,
    registry,
)
from tests.completions.fault_server import FaultServer

SyncFactory = Callable[[httpx.AsyncClient, dict[str, str]], OpenAI]
AsyncFactory = Callable[[httpx.AsyncClient, dict[str, str]], AsyncOpenAI]


@pytest.fixture
def sdk() -> Iterator[SyncFactory]:
    """The sync SDK on a registry, authenticating with a key (the API's ``Authorization: Bearer``); no retries."""
    made: list[OpenAI] = []

    def factory(client: httpx.AsyncClient, key: dict[str, str]) -> OpenAI:
        made.append(OpenAI(base_url=api_url(client), api_key=bearer(key), max_retries=0, timeout=30))
        return made[-1]

    yield factory
    for openai_client in made:
        openai_client.close()


@pytest.fixture
async def async_sdk() -> AsyncIterator[AsyncFactory]:
    made: list[AsyncOpenAI] = []

    def factory(client: httpx.AsyncClient, key: dict[str, str]) -> AsyncOpenAI:
        made.append(AsyncOpenAI(base_url=api_url(client), api_key=bearer(key), max_retries=0, timeout=30))
        return made[-1]

    yield factory
    for openai_client in made:
        await openai_client.close()


def bearer(key: dict[str, str]) -> str:
    return key["Authorization"].removeprefix("Bearer ")


@pytest.fixture
async def client(registry: RegistryFactory, fault: FaultServer, closed_port_url: str) -> httpx.AsyncClient:  # noqa: F811
    return await registry({"fault": backend(fault.url), "down": backend(closed_port_url)})  # type: ignore[attr-defined]


def api_url(client: httpx.AsyncClient) -> str:
    return str(client.base_url).rstrip("/") + "/v1"
