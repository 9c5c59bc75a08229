"""The ``registry`` command against a live registry (the client tests' fixtures), run as people run it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from registry.cli import main
from tests.clients.conftest import Live, fault, live, live_registry

__all__ = ["Ran", "fault", "live", "live_registry", "registry"]


@dataclass
class Ran:
    code: int
    out: str
    err: str


class Registry:
    """Runs ``registry ARGS`` against ``live`` with its admin key (or ``key``)."""

    def __init__(self, live: Live) -> None:
        self.live = live

    def __call__(self, *args: str, key: str | None = None, url: str | None = None, stdin: str | None = None) -> Ran:
        env = {"REGISTRY_URL": url or self.live.url, "REGISTRY_API_KEY": self.live.key if key is None else key}
        result = CliRunner().invoke(main, list(args), env=env, input=stdin)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Ran(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def registry(live: Live) -> Registry:
    return Registry(live)
