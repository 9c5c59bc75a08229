"""scripts/vllm-cpu.sh with a stand-in server (tests/scripts/vllm_stand_in.py) that starts an engine process.

vLLM's server starts an engine process (EngineCore, 1.8 GB); killed with -9, the
server left it running and ``stop`` did not reap it, and ``stop`` deleted the
server's log. The stand-in reproduces the process shape without installing vLLM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.faults.processes import wait_until

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "vllm-cpu.sh"
STAND_IN = Path(__file__).with_name("vllm_stand_in.py")


def live_members(group: int) -> list[int]:
    """Processes of process group ``group`` that are alive (zombies not yet reaped are not)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == group:
                members.append(int(stat.parent.name))
    return members


class Script:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "VLLM_CPU_HOME": str(home),
            "VLLM_CPU_SERVER_COMMAND": f"{sys.executable} {STAND_IN}",
            "VLLM_CPU_START_TIMEOUT": "60",
        }

    def __call__(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), *arguments], env=self.env, capture_output=True, text=True, timeout=120
        )


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Script]:
    runner = Script(tmp_path)
    yield runner
    for pidfile in (tmp_path / "run").glob("*.pid"):  # whatever a failed test left running
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)


def test_stop_after_the_server_was_killed_ends_its_engine_process_and_keeps_the_log(script: Script) -> None:
    port = free_port()
    started = script("start", str(port))
    assert started.returncode == 0, started.stderr
    assert started.stdout == f"http://127.0.0.1:{port}\n"
    pidfile = script.home / "run" / f"server-{port}.pid"
    group = int(pidfile.read_text())
    assert sorted(live_members(group))[0] == group  # the server leads its own process group
    assert len(live_members(group)) == 2  # the server and its engine process

    os.kill(group, signal.SIGKILL)  # the server alone, as an out-of-memory kill or `kill -9` does
    wait_until(lambda: group not in live_members(group), timeout=10, message="the server did not die")
    assert len(live_members(group)) == 1, "the engine process outlives the server"

    stopped = script("stop", str(port))

    assert stopped.returncode == 0, stopped.stderr
    assert live_members(group) == []
    assert not pidfile.exists()
    log = script.home / "run" / f"server-{port}.log"
    assert "engine pid" in log.read_text()
    assert str(log) in stopped.stderr  # says where the log is


def test_stop_ends_a_running_server_and_its_engine_process(script: Script) -> None:
    port = free_port()
    assert script("start", str(port)).returncode == 0
    group = int((script.home / "run" / f"server-{port}.pid").read_text())
    assert len(live_members(group)) == 2

    stopped = script("stop", str(port))

    assert stopped.returncode == 0, stopped.stderr
    assert live_members(group) == []
    assert (script.home / "run" / f"server-{port}.log").exists()
