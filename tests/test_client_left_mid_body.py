"""A client that hangs up while sending its body is a 499 ``client_closed_request`` on every route, not a 500.

Litestar's body read raises a 500 ``InternalServerException`` when the ASGI ``receive`` gives the client's
disconnect before the body is whole; ``translate_exception`` maps it for every route, so nothing is logged at
ERROR for what is the client's doing. The fast paths hand such a body on to Litestar, so these go through it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any
from unittest.mock import patch

import pytest
import structlog
from structlog.testing import capture_logs

import registry.lib.errors
import registry.lib.http
from registry.settings import Settings
from tests.conftest import AppClient
from tests.openai_compat.test_hostile_clients import hang_up_mid_body

# The modules whose structlog loggers could report a failed request.
LOGGING_MODULES = (registry.lib.errors, registry.lib.http)

ROUTES = [
    ("POST", "/v1/prompts/{name}/complete", {"variables": {"name": "Ada"}}),
    ("POST", "/v1/prompts/{name}/render", {"variables": {"name": "Ada"}}),
    ("POST", "/v1/events", {"metric": "clicks", "unit_id": "u1", "value": 1}),
    ("POST", "/v1/prompts", {"name": "{name}", "description": "a prompt that never arrives"}),
    ("PATCH", "/v1/prompts/{name}", {"description": "never arrives"}),
    ("POST", "/v1/configs", {"name": "{name}", "description": "never arrives"}),
    ("PUT", "/v1/prompts/{name}/semantic-cache", {"enabled": True}),
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"fast_path": False})


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """structlog's ``capture_logs`` with fresh loggers for ``LOGGING_MODULES`` (as tests/test_runtime_stop.py does):
    a module's cached logger keeps the processors of its first use and would not reach ``capture_logs``."""
    with capture_logs() as logs, contextlib.ExitStack() as stack:
        for module in LOGGING_MODULES:
            stack.enter_context(patch.object(module, "logger", structlog.get_logger(module.__name__)))
        yield logs


@pytest.mark.parametrize(("method", "route", "document"), ROUTES, ids=[f"{m} {r}" for m, r, _ in ROUTES])
async def test_a_client_that_hangs_up_mid_body_is_a_499_logged_nowhere_at_error(
    client: AppClient,
    admin: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    method: str,
    route: str,
    document: dict[str, Any],
) -> None:
    name = f"left-{uuid.uuid4().hex[:8]}"
    body = json.dumps(document).replace("{name}", name).encode()
    headers = {**admin, "host": "testserver", "content-type": "application/json", "content-length": str(len(body))}
    with caplog.at_level(logging.ERROR), captured_logs() as logs:
        sent = await hang_up_mid_body(
            client.app, headers, body[: len(body) // 2], method=method, path=route.format(name=name)
        )

    start, whole = sent
    problem = json.loads(whole["body"])
    assert (start["status"], problem["type"], problem["status"]) == (499, "/problems/client_closed_request", 499)
    assert dict(start["headers"])[b"content-type"] == b"application/problem+json"
    assert [log for log in logs if log["log_level"] in ("error", "critical")] == []
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []
