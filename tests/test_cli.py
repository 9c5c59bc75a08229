"""The `registry` command: a real `serve` process on the embedded default, and the commands people type."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.cli import main

REGISTRY = str(Path(sys.executable).parent / "registry")
KEY = re.compile(r"prk_[a-z2-9]{12}_[A-Za-z0-9_-]{43}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(
        self,
        env: dict[str, str],
        port: int,
        *,
        stdout: IO[str] | int = subprocess.DEVNULL,
        stderr: IO[str] | int = subprocess.PIPE,
    ) -> None:
        """``stdout`` and ``stderr`` may be files, for servers that log more than a pipe holds."""
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([REGISTRY, "serve"], env=env, stderr=stderr, stdout=stdout, text=True)
        self.stderr_lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read() if self.process.stderr else ""
            try:
                if httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("the server did not become healthy in 90 s")

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit status and stderr; a server that never exits fails after 30 s."""
        self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=30)
        return self.process.returncode, stderr


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(
        REGISTRY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        REGISTRY_PORT=str(free_port()),
        REGISTRY_ACCESS_LOG="false",
    )
    return env


@pytest.fixture
def server(embedded_env: dict[str, str]) -> Iterator[Server]:
    running = Server(embedded_env, int(embedded_env["REGISTRY_PORT"]))
    yield running
    if running.process.poll() is None:
        running.stop()


def run_cli(*args: str, url: str, key: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        main, list(args), env={"REGISTRY_URL": url, "REGISTRY_API_KEY": key}, catch_exceptions=False
    )
    return result.exit_code, result.output


def test_serve_migrates_prints_an_admin_key_once_and_the_cli_drives_it(
    server: Server, embedded_env: dict[str, str]
) -> None:
    code, stderr = server.stop()
    keys = sorted(set(KEY.findall(stderr)))
    assert len(keys) == 1, stderr
    assert code == 0, "SIGTERM ends the server cleanly"

    again = Server(embedded_env, int(embedded_env["REGISTRY_PORT"]))
    try:
        admin = keys[0]
        headers = {"Authorization": f"Bearer {admin}"}
        http = httpx.Client(base_url=again.url, headers=headers)
        assert http.post("/v1/prompts", json={"name": "support/summarize", "tags": ["support"]}).status_code == 201
        for template in ["Summarize: {{ text }}", "Summarize briefly: {{ text }}"]:
            response = http.post(
                "/v1/prompts/support%2Fsummarize/versions", json={"kind": "text", "template": template}
            )
            assert response.status_code == 201

        code, out = run_cli("prompts", "list", url=again.url, key=admin)
        assert code == 0
        assert "support/summarize" in out
        code, out = run_cli("versions", "list", "support/summarize", url=again.url, key=admin)
        assert code == 0
        assert re.search(r"^2\s+draft", out, re.M)
        assert re.search(r"^1\s+draft", out, re.M)
        code, out = run_cli("promote", "support/summarize", "1", "--to", "production", url=again.url, key=admin)
        assert code == 0
        assert "v1: draft -> production" in out
        code, out = run_cli(
            "promote", "support/summarize", "2", "--to", "production", "--reason", "shorter", url=again.url, key=admin
        )
        assert code == 0
        assert "v1: production -> archived" in out
        assert "v2: draft -> production" in out
        code, out = run_cli("diff", "support/summarize", "1", "2", url=again.url, key=admin)
        assert code == 0
        assert "+Summarize briefly: {{ text }}" in out
        code, out = run_cli("rollback", "support/summarize", "--reason", "too terse", url=again.url, key=admin)
        assert code == 0
        assert "v1: archived -> production (rollback)" in out
        code, out = run_cli("history", "support/summarize", url=again.url, key=admin)
        assert code == 0
        assert "too terse" in out
        assert "shorter" in out
        code, out = run_cli("history", "support/summarize", "--json", url=again.url, key=admin)
        assert code == 0
        assert '"action": "rollback"' in out
        rendered = http.post("/v1/prompts/support%2Fsummarize/render", json={"variables": {"text": "x"}}).json()
        assert rendered["version"] == 1

        code, out = run_cli("promote", "support/summarize", "9", "--to", "production", url=again.url, key=admin)
        assert code == 3, "not found"
        assert "error: prompt 'support/summarize' has no version 9" in out
        code, out = run_cli("prompts", "list", url=again.url, key="prk_aaaaaaaaaaaa_" + "x" * 43)
        assert code == 5, "unauthorized"
        assert "error:" in out
        http.close()
    finally:
        code, stderr = again.stop()
    assert code == 0
    assert not KEY.findall(stderr), "a second start must not create another admin key"


def test_keys_commands_work_on_the_database(
    database_url: str, clean_database: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_DATABASE_URL", database_url)
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "--name", "checkout-app", "--scopes", "read,analyze"])
    assert created.exit_code == 0, created.output
    secret = KEY.findall(created.output)
    assert len(secret) == 1
    public_id = secret[0].split("_")[1]
    listed = runner.invoke(main, ["keys", "list"])
    assert "checkout-app" in listed.output
    assert "analyze,read" in listed.output
    assert secret[0] not in listed.output
    revoked = runner.invoke(main, ["keys", "revoke", public_id])
    assert revoked.exit_code == 0
    assert "checkout-app" not in runner.invoke(main, ["keys", "list"]).output
    assert "checkout-app" in runner.invoke(main, ["keys", "list", "--all"]).output
    bad = runner.invoke(main, ["keys", "create", "--name", "x", "--scopes", "root"])
    assert bad.exit_code == 2
    assert "unknown scope" in bad.output
    missing = runner.invoke(main, ["keys", "revoke", "nosuchkey123"])
    assert missing.exit_code == 3, "not found"
