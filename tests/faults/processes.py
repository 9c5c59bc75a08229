"""Real processes the fault tests stop, kill and start again: PostgreSQL, Redis, the registry, a backend.

The shared PostgreSQL and Redis of the other tests are never touched: each
test module starts private ones on free ports, in temporary directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from registry.auth.keys import Scope
from registry.settings import Settings
from tests.conftest import free_port, make_key_on

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = str(Path(sys.executable).parent / "registry")


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    assert on_path, f"{name} not found: the fault tests need PostgreSQL's server binaries"
    return on_path


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; there it runs as the postgres user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def wait_until(condition: Callable[[], bool], *, timeout: float, message: str, interval: float = 0.05) -> float:
    """Poll until ``condition`` holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{message} (waited {timeout} s)"
        time.sleep(interval)
    return time.monotonic() - started


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (no fsync: durability of the registry, not of PostgreSQL, is tested)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="registry-faults-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.data = self.directory / "data"
        subprocess.run(
            _as_postgres_user(
                [_postgres_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = f"{self.directory}/log"
        subprocess.run(
            _as_postgres_user([_postgres_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start"]),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres_user([_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            check=True,
            capture_output=True,
        )

    def remove(self) -> None:
        subprocess.run(
            _as_postgres_user([_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivateRedis:
    """A throwaway Redis without persistence, restartable on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=10, message="redis did not start")

    def _answers(self) -> bool:
        try:
            import socket

            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


class RegistryProcess:
    """``registry serve`` in its own process; its log goes to a file (a pipe nobody reads would block it)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = int(env["REGISTRY_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("ab")
        # Its own process group: the server's workers are child processes, and a kill takes them all,
        # as a container runtime would.
        self.process = subprocess.Popen(
            [REGISTRY, "serve"], env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        wait_until(self._healthy, timeout=90, message=f"the registry did not become healthy\n{self.log()}")

    def _healthy(self) -> bool:
        assert self.process.poll() is None, f"the registry exited at start\n{self.log()}"
        try:
            return httpx.get(f"{self.url}/health", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def terminate(self) -> float:
        """SIGTERM, then wait for the exit; returns the seconds it took."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self._log.close()
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL to the server and its workers at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    def close(self) -> None:
        """Kill whatever is left of the process group (a worker outlives a server that exited)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._log.close()


def registry_env(database_url: str, redis_url: str | None, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env.update(
        REGISTRY_DATABASE_URL=database_url,
        REGISTRY_PORT=str(free_port()),
        REGISTRY_ACCESS_LOG="false",
        REGISTRY_BOOTSTRAP_ADMIN_KEY="false",
        REGISTRY_LOG_LEVEL="WARNING",
        REGISTRY_WEBHOOK_DISPATCH_INTERVAL_SECONDS="3600",
    )
    if redis_url:
        env["REGISTRY_REDIS_URL"] = redis_url
        env["REGISTRY_REDIS_KEY_PREFIX"] = f"faults-{free_port()}:"
    env.update({f"REGISTRY_{k.upper()}": v for k, v in overrides.items()})
    return env


def admin_headers(database_url: str) -> dict[str, str]:
    """An admin key in the given (migrated) database."""
    return asyncio.run(make_key_on(Settings(database_url=database_url), Scope.ADMIN, name="faults-admin"))


def metric_value(metrics_text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample (0 when absent)."""
    for line in metrics_text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


@dataclass
class LoadResult:
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all
    stale: bool = False
    label: str = ""  # what ``Load.inspect`` saw in the response


@dataclass
class Load:
    """Threads sending one kind of request in a loop until stopped, recording every outcome."""

    send: Callable[[httpx.Client, int], httpx.Response]
    base_url: str
    headers: dict[str, str]
    threads: int = 4
    inspect: Callable[[httpx.Response], str] | None = None
    results: list[LoadResult] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for number in range(self.threads):
            worker = threading.Thread(target=self._run, args=(number,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)

    def _run(self, number: int) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=10) as http:
            count = 0
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = self.send(http, number * 1_000_000 + count)
                    result = LoadResult(
                        started,
                        time.monotonic(),
                        response.status_code,
                        "x-registry-stale" in response.headers,
                        self.inspect(response) if self.inspect else "",
                    )
                except httpx.TransportError:
                    result = LoadResult(started, time.monotonic(), 0)
                self.results.append(result)
                count += 1
                time.sleep(0.005)

    def between(self, start: float, end: float) -> list[LoadResult]:
        return [r for r in self.results if start <= r.started and r.ended <= end]


def record_figures(test: str, figures: dict[str, Any]) -> None:
    """Print the measured figures (seen with -s) and append them to $REGISTRY_FAULT_FIGURES when set."""
    line = json.dumps({"test": test, **figures})
    print(f"\nfigures {line}")
    target = os.environ.get("REGISTRY_FAULT_FIGURES")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def ok(response: httpx.Response, *codes: int) -> dict[str, Any]:
    assert response.status_code in (codes or (200, 201)), response.text
    body: dict[str, Any] = response.json()
    return body


def make_prompt(http: httpx.Client, name: str, versions: int = 2, *, promote: int | None = 1) -> None:
    """A text prompt with ``versions`` versions ("v1 says {{ x }}", ...), ``promote`` in production."""
    ok(http.post("/v1/prompts", json={"name": name}))
    for number in range(1, versions + 1):
        ok(http.post(f"/v1/prompts/{name}/versions", json={"kind": "text", "template": f"v{number} says {{{{ x }}}}"}))
    if promote is not None:
        ok(promote_to_production(http, name, promote, expected_current=None))


def promote_to_production(
    http: httpx.Client, name: str, version: int, *, expected_current: int | None
) -> httpx.Response:
    body = {"to": "production", "expected_current": expected_current}
    return http.post(f"/v1/prompts/{name}/versions/{version}/promote", json=body)


class BackendProcess:
    """An OpenAI-compatible fault server (``tests/completions/fault_server.py``) in its own process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.fault_backend", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=15, message="the fault server did not start")

    def _answers(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, "the fault server exited"
        try:
            return httpx.post(f"{self.url}/tokenize", json={"prompt": "x"}, timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def publish_completion_prompt(
    http: httpx.Client,
    *,
    prompt: str | None,
    config: str,
    backend: str,
    model: str = "ok",
    max_tokens: int = 8,
    fallback: str | None = None,
) -> None:
    """A chat prompt in production, linked to a config (in production) that runs on ``backend``."""
    ok(http.post("/v1/configs", json={"name": config}))
    body: dict[str, Any] = {"backend": backend, "model": model, "params": {"max_tokens": max_tokens}}
    if fallback:
        body["fallback"] = {"name": fallback, "version": 1}
    ok(http.post(f"/v1/configs/{config}/versions", json=body))
    ok(http.post(f"/v1/configs/{config}/versions/1/promote", json={"to": "production", "expected_current": None}))
    if prompt:
        ok(http.post("/v1/prompts", json={"name": prompt}))
        version = {
            "kind": "chat",
            "messages": [{"role": "user", "content": "Say hello to {{ name }}."}],
            "config": {"name": config, "version": 1},
        }
        ok(http.post(f"/v1/prompts/{prompt}/versions", json=version))
        ok(promote_to_production(http, prompt, 1, expected_current=None))
