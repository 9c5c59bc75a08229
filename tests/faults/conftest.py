"""Private PostgreSQL and Redis per test module, so the fault tests can stop and start them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.processes import PrivatePostgres, PrivateRedis


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
