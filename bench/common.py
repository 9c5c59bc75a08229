"""What the benchmarks share: scratch databases, machine description, BENCHMARKS.md sections."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.auth.service import ApiKeyService
from registry.db import migrate
from registry.db.engine import create_engine, create_sessionmaker
from registry.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SERVER = os.environ.get("REGISTRY_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REGISTRY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BENCHMARKS = ROOT / "BENCHMARKS.md"
PROMPT = "bench/greeting"
PATH = "bench%2Fgreeting"  # the prompt's name in URLs
# The tests' fault server (an OpenAI-compatible stand-in backend) on a port: python -c FAULT_SERVER PORT ROOT
_FAULT_SERVER = (
    "import sys, uvicorn; sys.path.insert(0, sys.argv[2]); "
    "from tests.completions.fault_server import FaultServer; "
    "uvicorn.run(FaultServer(), host='127.0.0.1', port=int(sys.argv[1]), log_level='warning')"
)


def http_scope(
    method: str, path: str, raw_path: bytes, headers: list[tuple[bytes, bytes]], query_string: bytes = b""
) -> dict[str, Any]:
    """The ASGI scope of one HTTP/1.1 request from a local client, as a server hands it to the app."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": query_string,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def database_url(name: str) -> str:
    return f"{SERVER.rpartition('/')[0]}/{name}"


async def admin(statement: str) -> None:
    engine = create_async_engine(SERVER, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with engine.connect() as connection:
        await connection.execute(text(statement))
    await engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def fault_server(prefix: Sequence[str] = ()) -> Iterator[str]:
    """The tests' fault server in its own process (started through ``prefix``, e.g. taskset), once it accepts
    connections: its URL. Stopped on exit."""
    port = free_port()
    process = subprocess.Popen([*prefix, sys.executable, "-c", _FAULT_SERVER, str(port), str(ROOT)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the fault server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def require_wrk() -> None:
    """The load benchmarks drive the service with wrk (Debian: ``apt-get install wrk``)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or brew install wrk)")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def tool_version(command: list[str]) -> str:
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    first = (output.stdout or output.stderr).strip().splitlines()
    return re.sub(r"\s+", " ", first[0]) if first else "unknown"


def write_section(section: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the ``## section`` of BENCHMARKS.md with ``body``."""
    before = path.read_text() if path.exists() else "# Benchmarks\n"
    # Only a heading line counts: prose elsewhere may quote the section's title.
    heading = re.search(rf"^{re.escape(section)}$", before, flags=re.MULTILINE)
    if heading is None:
        updated = before.rstrip("\n") + "\n\n" + body
    else:
        start = heading.start()
        end = before.find("\n## ", heading.end())
        updated = before[:start] + body.rstrip("\n") + "\n" + ("" if end < 0 else before[end:])
    path.write_text(updated.rstrip("\n") + "\n")


async def prepare(settings: Settings) -> str:
    engine = create_engine(settings)
    await migrate.upgrade(engine)
    async with create_sessionmaker(engine)() as session, session.begin():
        _, secret = await ApiKeyService(session).create_key("bench", [Scope.ADMIN], Actor(name="bench"))
    await engine.dispose()
    return secret


COMPLETION_PROMPT = "Summarize the following in one line: {{ text }}"  # the completion benchmarks' prompt
COMPLETION_TEXT = "the registry renders prompts and forwards them to the engine"


def completion_setup(model: str, tokens: int) -> list[tuple[str, dict[str, Any]]]:
    """The POSTs that make the completion benchmarks' config and prompt ``bench`` (``tokens`` each, to the end)."""
    params = {"max_tokens": tokens, "temperature": 0.8, "extra": {"ignore_eos": True}}
    return [
        ("/v1/configs/", {"name": "bench"}),
        ("/v1/configs/bench/versions", {"backend": "local", "model": model, "params": params}),
        ("/v1/configs/bench/versions/1/promote", {"to": "production", "expected_current": None}),
        ("/v1/prompts/", {"name": "bench"}),
        (
            "/v1/prompts/bench/versions",
            {
                "kind": "chat",
                "messages": [{"role": "user", "content": COMPLETION_PROMPT}],
                "config": {"name": "bench", "version": 1},
            },
        ),
        ("/v1/prompts/bench/versions/1/promote", {"to": "production", "expected_current": None}),
    ]


def publish(base: str, headers: dict[str, str]) -> None:
    """A prompt with two versions and a running 50/50 experiment between them."""
    with httpx.Client(base_url=base, headers=headers, timeout=10) as http:
        for method, path, body in [
            ("POST", "/v1/prompts", {"name": PROMPT}),
            ("POST", f"/v1/prompts/{PATH}/versions", {"kind": "text", "template": "Hello {{ name }}, how can I help?"}),
            ("POST", f"/v1/prompts/{PATH}/versions", {"kind": "text", "template": "Hi {{ name }}! What do you need?"}),
            ("POST", f"/v1/prompts/{PATH}/versions/1/promote", {"to": "production", "expected_current": None}),
            ("POST", "/v1/metrics", {"key": "bench_converted", "kind": "binomial"}),
            (
                "POST",
                "/v1/experiments",
                {
                    "key": "bench-greeting",
                    "prompt": PROMPT,
                    "variants": [{"key": "a", "prompt_version": 1}, {"key": "b", "prompt_version": 2}],
                    "primary_metric": "bench_converted",
                },
            ),
            ("POST", "/v1/experiments/bench-greeting/start", None),
        ]:
            response = http.request(method, path, json=body)
            response.raise_for_status()


def wait_healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited during start")
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


def server_command(server: str, workers: int, port: int) -> list[str]:
    target = "bench.app:create_bench_app"
    if server == "granian":
        return [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--workers", str(workers),
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", target]  # fmt: skip
    return [sys.executable, "-m", "uvicorn", "--factory", "--workers", str(workers), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning", "--no-access-log", target]  # fmt: skip


async def clear_redis(prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    async for key in redis.scan_iter(match=f"{prefix}*"):
        await redis.delete(key)
    await redis.aclose()


@dataclass(frozen=True)
class Deployment:
    base: str  # the API's URL
    headers: dict[str, str]  # an admin key's Authorization header
    secret: str
    database_url: str
    api_pid: int


@contextmanager
def deployment(server: str = "granian", workers: int = 1) -> Iterator[Deployment]:
    """The service as docker-compose.yml runs it, on a scratch database: API processes, one worker.

    Publishes ``PROMPT`` with two versions and a running 50/50 experiment; drops the
    database and the Redis keys afterwards.
    """
    name = f"registry_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    url = database_url(name)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
        "REGISTRY_DATABASE_URL": url,
        "REGISTRY_REDIS_URL": REDIS_URL,
        "REGISTRY_REDIS_KEY_PREFIX": prefix,
        "REGISTRY_ACCESS_LOG": "false",
        "REGISTRY_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    secret = asyncio.run(prepare(Settings(database_url=url, redis_url=REDIS_URL, redis_key_prefix=prefix)))
    headers = {"Authorization": f"Bearer {secret}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = subprocess.Popen(server_command(server, workers, port), env={**env, "REGISTRY_ROLE": "api"}, cwd=ROOT)
    worker_env = {**env, "REGISTRY_WORKER_PORT": str(free_port())}  # its probes, on a port nothing else holds
    worker = subprocess.Popen([sys.executable, "-m", "registry", "worker"], env=worker_env, cwd=ROOT)
    try:
        wait_healthy(base, api)
        publish(base, headers)
        yield Deployment(base, headers, secret, url, api.pid)
    finally:
        for child in (api, worker):
            child.terminate()
            child.wait(timeout=30)
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(clear_redis(prefix))
