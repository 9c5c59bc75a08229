"""/metrics of `registry serve` with two worker processes reports the whole process group.

Each scrape lands on one worker; reporting only that worker's counts made totals
alternate (16, 14, 16, ...), which Prometheus reads as counter resets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.processes import PrivatePostgres, RegistryProcess, registry_env, wait_until

REQUESTS = 30
SCRAPES = 12


def fresh_get(url: str) -> httpx.Response:
    """A request on a new connection, so the server's workers share them (a kept-alive one stays on one worker)."""
    return httpx.get(url, timeout=10, headers={"Connection": "close"})


HEALTH_REQUESTS = re.compile(r'^registry_http_requests_total\{method="GET",route="/health",status="200"\} (\S+)$', re.M)


def health_requests(metrics: str) -> float:
    return sum(float(value) for value in HEALTH_REQUESTS.findall(metrics))


def workers_reporting(metrics: str) -> set[str]:
    return set(re.findall(r'^registry_experiments_unloadable\{[^}]*worker="(\d+)"', metrics, re.M))


@pytest.fixture(params=["granian", "uvicorn"])
def two_workers(request: pytest.FixtureRequest, postgres: PrivatePostgres, tmp_path: Path) -> Iterator[RegistryProcess]:
    server = RegistryProcess(registry_env(postgres.url, None, server=request.param, workers="2"), tmp_path / "log")
    try:
        yield server
    finally:
        server.close()


def test_every_scrape_reports_the_requests_of_both_workers(two_workers: RegistryProcess) -> None:
    server = two_workers
    wait_until(
        lambda: len(workers_reporting(fresh_get(f"{server.url}/metrics").text)) == 2,
        timeout=30,
        message=f"both workers never appeared in /metrics\n{server.log()}",
    )
    before = health_requests(fresh_get(f"{server.url}/metrics").text)
    for _ in range(REQUESTS):
        assert fresh_get(f"{server.url}/health").status_code == 200
    # Another worker's snapshot may be up to a second old when its requests just ended: wait for the total once,
    # then every scrape, whichever worker answers it, must say the same.
    wait_until(
        lambda: health_requests(fresh_get(f"{server.url}/metrics").text) - before == REQUESTS,
        timeout=30,
        message="the scrapes never added up to the requests sent",
    )
    scrapes = [fresh_get(f"{server.url}/metrics") for _ in range(SCRAPES)]

    assert [health_requests(s.text) - before for s in scrapes] == [REQUESTS] * SCRAPES
    assert all(workers_reporting(s.text) == workers_reporting(scrapes[0].text) for s in scrapes)
    assert len(workers_reporting(scrapes[0].text)) == 2
