"""Schemathesis against the served OpenAPI schema: no 5xx, and every response as the schema declares it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.security.conftest import LiveServer

SCHEMATHESIS = str(Path(sys.executable).parent / "st")
# Per operation; with the coverage phase's boundary cases this makes about 3,000 requests in 30 s on 2 cores.
MAX_EXAMPLES = 5
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


def schemathesis(live_server: LiveServer, key: str, cwd: Path, *operations: str) -> tuple[int, int]:
    """Run schemathesis with ``key`` and the operation filters given; (generated, passed), after a clean exit."""
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{live_server.url}/schema/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "1",
            # One worker: schemathesis' coverage phase is not thread-safe on Python 3.11 (an AST recursion error).
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            *operations,
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
    )
    summary = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert result.returncode == 0, result.stdout[-6000:]
    assert summary, result.stdout[-6000:]
    return int(summary.group(1)), int(summary.group(2))


def test_generated_requests_get_no_5xx_and_only_declared_responses(live_server: LiveServer, tmp_path: Path) -> None:
    generated, passed = schemathesis(
        live_server,
        live_server.admin_key,
        tmp_path,
        # Revoking its own key would turn every later request into a 401 (the next test runs it alone).
        "--exclude-operation-id",
        "revokeApiKey",
        # An endless server-sent event stream: each case would wait for its timeout (tests/feed covers it).
        "--exclude-operation-id",
        "changeFeed",
    )
    assert generated == passed >= 1000
    print(f"schemathesis: {generated} cases, {passed} passed, 0 with a 5xx")


def test_generated_key_revocations_get_no_5xx_and_only_declared_responses(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """Revocation on its own, with an admin key made for it: a case that revokes the key it runs with cannot
    turn the main run's requests into 401s."""
    created = httpx.post(
        f"{live_server.url}/v1/keys",
        json={"name": "schemathesis-revoker", "scopes": ["admin"]},
        headers={"Authorization": f"Bearer {live_server.admin_key}"},
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    generated, passed = schemathesis(live_server, key, tmp_path, "--include-operation-id", "revokeApiKey")
    assert generated == passed >= 10
    print(f"schemathesis (revokeApiKey): {generated} cases, {passed} passed, 0 with a 5xx")
