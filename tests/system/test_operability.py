"""What an operator meets first: settings refused or warned about at start, probes, and a quiet log in an outage."""

from __future__ import annotations

import json
import logging
import pydoc
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import structlog
from click.testing import CliRunner
from granian.log import LOGGING_CONFIG as GRANIAN_LOGGING_CONFIG
from structlog import make_filtering_bound_logger
from structlog.testing import LogCapture

import registry.runtime
from registry.cli import main
from registry.cli.server_commands import run_server
from registry.lib.jobs import PeriodicJob
from registry.lib.logging import granian_log_config
from registry.runtime import Runtime
from registry.settings import Settings, unknown_variables
from registry.system.controller import READINESS_CHECK_SECONDS
from registry.system.probes import ProbeListener, ProbePortError
from tests.embedded import embedded_settings
from tests.test_operations import compose


def test_a_misspelt_variable_is_warned_about_and_bad_urls_stop_the_start_naming_their_variable(
    tmp_path: Path,
) -> None:
    env = {
        "REGISTRY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        "REGISTRY_DATABSE_URL": "postgresql+asyncpg://registry@db/registry",  # ignored, and said so
        "REGISTRY_URL": "http://127.0.0.1:8000",  # the API commands' own variable: no warning
        "REGISTRY_REDIS_URL": "localhost:6379",  # redis' own parser refused it at start, with a traceback
        "REGISTRY_BACKENDS": '{"local": {"url": "vllm:8000"}}',  # every completion would have failed
    }
    result = CliRunner().invoke(main, ["migrate"], env=env, catch_exceptions=False)

    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert (
        "warning: REGISTRY_DATABSE_URL is not a setting and is ignored (did you mean REGISTRY_DATABASE_URL?)" in lines
    )
    assert "REGISTRY_URL " not in result.stderr
    assert lines[-1] == (
        "error: invalid settings: REGISTRY_REDIS_URL: redis_url must start with redis://, rediss:// "
        "or unix://; REGISTRY_BACKENDS (local.url): url must be http:// or https:// and a host, "
        "e.g. http://vllm:8000"
    )
    assert not (tmp_path / "registry.db").exists()

    # A list setting is JSON: a bare CIDR was a traceback from the settings' parser.
    env = {"REGISTRY_DATABASE_URL": env["REGISTRY_DATABASE_URL"], "REGISTRY_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.0/8"}
    result = CliRunner().invoke(main, ["migrate"], env=env, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == (
        "error: invalid settings: REGISTRY_WEBHOOK_ALLOWED_NETWORKS: not JSON (Extra data: line 1 column 5 (char 4))"
    )


def test_durations_that_are_infinite_or_past_a_century_stop_the_start_naming_their_variable(tmp_path: Path) -> None:
    """Accepted, they overflowed later: an infinite cache TTL failed each completion after it was charged, a
    retention of a billion days failed the doctor and the purge."""
    env = {
        "REGISTRY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        "REGISTRY_COMPLETION_CACHE_TTL_SECONDS": "inf",
        "REGISTRY_COMPLETION_IO_RETENTION_DAYS": "1e9",
        "REGISTRY_CONSOLE_SESSION_MINUTES": "30",
        "REGISTRY_BACKENDS": '{"local": {"url": "http://vllm:8000", "total_timeout": 1e300}}',
    }
    result = CliRunner().invoke(main, ["migrate"], env=env, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == (
        "error: invalid settings: REGISTRY_BACKENDS (local.total_timeout): at most 3,153,600,000 seconds (a century); "
        "REGISTRY_COMPLETION_CACHE_TTL_SECONDS: Input should be a finite number; "
        "REGISTRY_COMPLETION_IO_RETENTION_DAYS: at most 36,500 days (a century)"
    )
    assert not (tmp_path / "registry.db").exists()
    assert Settings(completion_io_retention_days=36_500, semantic_cache_ttl_seconds=3_153_600_000).is_sqlite


def test_every_variable_the_compose_file_sets_is_a_setting_and_its_readiness_probe_outwaits_the_checks() -> None:
    assert Settings(redis_url="").redis_url == ""  # empty is unset (no Redis), not a bad URL
    # Settings are read whatever the case of their names; so is a misspelt one found.
    assert unknown_variables({"registry_port": "8000", "registry_databse_url": "sqlite+aiosqlite://"}) == [
        "registry_databse_url is not a setting and is ignored (did you mean REGISTRY_DATABASE_URL?)"
    ]
    services = compose()["services"]
    for name in ("migrate", "registry", "worker"):
        environment = {key: str(value) for key, value in services[name]["environment"].items()}
        assert unknown_variables(environment) == [], name
    healthcheck = services["registry"]["healthcheck"]
    probe_timeout = float(re.findall(r"timeout=([0-9.]+)", " ".join(healthcheck["test"]))[0])
    # /ready answers only once a hung dependency's check gave up: a shorter wait fails a replica that serves.
    assert READINESS_CHECK_SECONDS < probe_timeout < float(healthcheck["timeout"].rstrip("s"))


async def test_a_job_failing_run_after_run_logs_its_failures_sparsely_and_its_recovery(tmp_path: Path) -> None:
    runtime = Runtime.build(embedded_settings(tmp_path))
    runs = 0

    async def fail_nine_times() -> None:
        nonlocal runs
        runs += 1
        if runs <= 9:
            raise ConnectionRefusedError("the database is down")
        runtime._stopping = True  # the loop ends after this run

    # Every level, whatever level the logging of an app built earlier in this process left configured.
    capture = LogCapture()
    logger = structlog.wrap_logger(None, processors=[capture], wrapper_class=make_filtering_bound_logger(0))
    try:
        with patch.object(registry.runtime, "logger", logger):
            await runtime._every(PeriodicJob("flaky", 0.0, fail_nine_times))
    finally:
        await runtime.engine.dispose()

    seen: list[tuple[Any, ...]] = [(log["event"], log["consecutive_failures"]) for log in capture.entries]
    failures = runtime.metrics_registry.get_sample_value(
        "registry_background_job_failures_total", {"background_job": "flaky"}
    )
    assert failures == 9  # each one counted, for alerts (deploy/prometheus-alerts.yml)
    assert seen == [
        ("background job failed", 1),
        ("background job failed", 2),
        ("background job failed", 4),
        ("background job failed", 8),
        ("background job recovered", 9),
    ]


def test_the_servers_own_lines_are_json_like_every_other_line_on_stdout(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    config = granian_log_config(settings)
    assert config is not None
    assert config["loggers"].keys() == GRANIAN_LOGGING_CONFIG["loggers"].keys()
    assert {handler["formatter"] for handler in config["handlers"].values()} == {"json"}
    formatter = pydoc.locate(config["formatters"]["json"]["()"])()  # type: ignore[operator]
    record = logging.LogRecord("_granian", logging.INFO, __file__, 1, 'Listening at: "%s"', ("http://x",), None)

    line = json.loads(formatter.format(record))

    assert line.items() >= {"event": 'Listening at: "http://x"', "logger": "granian", "level": "info"}.items()
    assert line["timestamp"].endswith("Z")
    assert granian_log_config(embedded_settings(tmp_path, log_json=False)) is None


# A granian worker starts with its server's handlers, which only flag a stop in the server's state; the app's
# factory is replaced by one that receives a SIGTERM while it runs, as a worker stopped during its start does.
STOPPED_WHILE_STARTING = """
import os, signal, sys, types
signal.signal(signal.SIGTERM, lambda *_: None)
sys.modules["registry.app"] = types.SimpleNamespace(create_app=lambda: os.kill(os.getpid(), signal.SIGTERM))
from registry.granian_worker import create_app
create_app()
sys.exit(0)
"""


def test_a_granian_worker_stopped_while_it_builds_the_app_ends_instead_of_serving_on(tmp_path: Path) -> None:
    # Before, the signal was lost: the worker served on, and `registry serve` waited for it forever.
    finished = subprocess.run([sys.executable, "-c", STOPPED_WHILE_STARTING], capture_output=True, timeout=120)

    assert finished.returncode == -signal.SIGTERM, finished.stderr.decode()
    with patch("registry.granian_master.RegistryGranian") as granian:
        run_server(embedded_settings(tmp_path))
    assert granian.call_args.args[0] == "registry.granian_worker:create_app"
    # Its own lines follow REGISTRY_LOG_LEVEL too (embedded_settings: WARNING), as JSON (the test below).
    assert granian.call_args.kwargs["log_level"] == "warning"


async def test_a_worker_whose_probe_port_is_taken_fails_with_an_error_not_uvicorns_exit(tmp_path: Path) -> None:
    # uvicorn exits the process when it cannot bind: `registry worker` ended with status 3 ("not found").
    runtime = Runtime.build(embedded_settings(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        try:
            with pytest.raises(ProbePortError, match=f"cannot listen on 127.0.0.1:{port}"):
                await ProbeListener(runtime, "127.0.0.1", port).start()
        finally:
            await runtime.engine.dispose()


def test_serve_on_a_taken_port_says_so_in_one_line_before_touching_the_database(tmp_path: Path) -> None:
    # Before: migrations and a first admin key, then a page of granian's Rust backtrace (uvicorn: status 3).
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {"REGISTRY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", "REGISTRY_PORT": str(port)}
        result = CliRunner().invoke(main, ["serve"], env=env, catch_exceptions=False)

    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (REGISTRY_HOST, REGISTRY_PORT)"
    )
    assert not (tmp_path / "registry.db").exists()


def test_migrate_says_the_revision_the_database_is_at_and_refuses_an_unknown_one_in_a_line(tmp_path: Path) -> None:
    env = {"REGISTRY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"}
    runner = CliRunner()
    said = [runner.invoke(main, ["migrate", "--revision", r], env=env).stderr for r in ("0002", "0001")]

    # An upgrade never goes down: it said "database at 0001" of a database at 0002.
    assert [text.splitlines()[-1] for text in said] == ["database at 0002", "database at 0002"]
    unknown = runner.invoke(main, ["migrate", "--revision", "0002x"], env=env)
    assert unknown.exit_code == 2, unknown.output  # was a traceback, status 1
    assert (
        unknown.stderr.splitlines()[-1] == "error: cannot migrate to 0002x: Can't locate revision identified by '0002x'"
    )
