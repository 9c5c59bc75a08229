"""The ``registry`` command against a live registry (the client tests' fixtures), run as people run it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from registry.cli import main
from tests.api import path
from tests.clients.conftest import Live, LiveFactory, fault, live, live_registry
from tests.completions.conftest import backend
from tests.evals.conftest import stand_in
from tests.evals.stand_in import StandIn

__all__ = ["Ran", "evals_live", "fault", "live", "live_registry", "registry", "stand_in"]


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
def registry(request: pytest.FixtureRequest) -> Registry:
    """Commands against ``evals_live`` when the test uses it, else against ``live``; never a second registry.

    Every registry serving the test's database runs an evaluation worker: a plain ``live`` next to
    ``evals_live`` could take a run before the stand-in's worker does, and fail it for want of the
    ``stand-in`` backend.
    """
    return Registry(request.getfixturevalue("evals_live" if "evals_live" in request.fixturenames else "live"))


@pytest.fixture
def evals_live(live_registry: LiveFactory, stand_in: tuple[StandIn, str]) -> Iterator[Live]:
    """A live registry whose backend ``stand-in`` answers each item its own ``answer`` (tests/evals/stand_in.py).

    It serves from a thread of this process, and its evaluation worker may warn (a lease lost on a busy
    machine, a cancelled run let go) while a command runs under CliRunner, which swaps ``sys.stdout``: the
    registry's log goes to the real stderr meanwhile, so a command's output is its own.
    """
    server, url = stand_in
    server.requests.clear()
    server.released.clear()
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    try:
        yield live_registry(
            backends={"stand-in": backend(url, max_retries=0, breaker_cooldown=0.05)}, eval_poll_seconds=0.02
        )
    finally:
        structlog.configure(**saved)


def stand_in_prompt(live: Live, name: str, template: str = "{{ answer }}", *, model: str = "echo") -> int:
    """A new version of ``name`` (created if need be) answering through the stand-in; returns its number."""
    config = f"{name.replace('/', '-')}-config"
    if live.admin.get(f"/v1/configs/{config}/versions").status_code == 404:
        live.ok(live.admin.post("/v1/configs", json={"name": config}))
    body: dict[str, Any] = {"backend": "stand-in", "model": model, "params": {"temperature": 0, "max_tokens": 64}}
    config_version = live.ok(live.admin.post(f"/v1/configs/{config}/versions", json=body))["version"]
    if live.admin.get(f"/v1/prompts/{path(name)}/versions").status_code == 404:
        live.ok(live.admin.post("/v1/prompts", json={"name": name}))
    content = {
        "kind": "chat",
        "messages": [{"role": "user", "content": template}],
        "config": {"name": config, "version": config_version},
    }
    version: int = live.ok(live.admin.post(f"/v1/prompts/{path(name)}/versions", json=content))["version"]
    return version
