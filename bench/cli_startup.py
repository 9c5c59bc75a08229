"""Benchmark: how long ``registry`` takes to start, for help and for commands that call the API.

Starts the service on the embedded default (a SQLite file in a scratch folder, ``registry serve``
on a free port, the admin key it prints on a first start), creates one prompt, then runs each
command ``--runs`` times (20 by default), interleaved, as a fresh process, and reports the median
and the 90th percentile of its wall time. ``python -c pass`` is the interpreter's own start-up;
``keys list`` works on the database directly, so it loads the server's modules, for comparison.

Run: ``make bench-cli`` (or ``python bench/cli_startup.py``); results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, machine, write_section  # noqa: E402

SECTION = "## CLI start-up"
REGISTRY = str(Path(sys.executable).parent / "registry")
KEY = re.compile(r"prk_[a-z2-9]{12}_[A-Za-z0-9_-]{43}")
TARGET_SECONDS = 0.3  # what the commands that call the API should start in

COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass (the interpreter alone)", [sys.executable, "-c", "pass"]),
    ("registry --help", [REGISTRY, "--help"]),
    ("registry prompts list", [REGISTRY, "prompts", "list"]),
    ("registry render greet --var name=Ada", [REGISTRY, "render", "greet", "--var", "name=Ada"]),
    ("registry keys list (database, loads the server)", [REGISTRY, "keys", "list"]),
]


def start_server(env: dict[str, str], port: int, log: Path) -> tuple[subprocess.Popen[str], str]:
    """``registry serve`` on the embedded default, its stderr to ``log``; the process and its URL."""
    with log.open("w") as stderr:
        process = subprocess.Popen([REGISTRY, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"registry serve exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=0.5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("registry serve did not become healthy in 90 s")


def seconds(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr}")
    return elapsed


def measure(runs: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as folder:
        port = free_port()
        # As installed: Python caches compiled modules (the warm-up round writes them) unless told not to.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_") and k != "PYTHONDONTWRITEBYTECODE"}
        env.update(
            REGISTRY_DATABASE_URL=f"sqlite+aiosqlite:///{folder}/registry.db",
            REGISTRY_PORT=str(port),
            REGISTRY_ACCESS_LOG="false",
        )
        log = Path(folder) / "serve.log"
        process, url = start_server(env, port, log)
        try:
            keys = KEY.findall(log.read_text())
            if not keys:
                raise RuntimeError(f"no admin key in the server's output: {log.read_text()}")
            env.update(REGISTRY_URL=url, REGISTRY_API_KEY=keys[0])
            headers = {"Authorization": f"Bearer {keys[0]}"}
            with httpx.Client(base_url=url, headers=headers) as http:
                http.post("/v1/prompts", json={"name": "greet"}).raise_for_status()
                http.post("/v1/prompts/greet/versions", json={"kind": "text", "template": "Hello {{ name }}"})
                promoted = http.post(
                    "/v1/prompts/greet/versions/1/promote", json={"to": "production", "expected_current": None}
                )
                promoted.raise_for_status()
            times: dict[str, list[float]] = {label: [] for label, _ in COMMANDS}
            for _, command in COMMANDS:  # one warm-up round: the first run reads the files from disk
                seconds(command, env)
            for _ in range(runs):
                for label, command in COMMANDS:
                    times[label].append(seconds(command, env))
            return times
        finally:
            process.terminate()
            process.wait(timeout=30)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def report(times: dict[str, list[float]], runs: int, load: float) -> str:
    lines = [
        SECTION,
        "",
        f"Wall time of each command as a fresh process, {runs} runs each, interleaved after a warm-up round; "
        "the API commands run against `registry serve` on the embedded default (SQLite) on the same machine, "
        "so their time includes one or two requests. The commands that call the API import only click, the "
        "Python client and the CLI's own modules; the server's (SQLAlchemy, Litestar, SciPy) load only in "
        "`serve`, `worker`, `migrate` and `keys` (before this, each command took 3.4 to 5.7 s).",
        "",
        "| command | median ms | p90 ms |",
        "| --- | ---: | ---: |",
    ]
    for label, values in times.items():
        lines.append(f"| `{label}` | {statistics.median(values) * 1000:,.0f} | {p90(values) * 1000:,.0f} |")
    api = [statistics.median(times[label]) for label, _ in COMMANDS[2:4]]
    verdict = "under" if max(api) < TARGET_SECONDS else "over"
    lines += [
        "",
        f"- the API commands' medians are {verdict} the {TARGET_SECONDS * 1000:.0f} ms target "
        f"(slowest: {max(api) * 1000:.0f} ms)",
        f"- command: `make bench-cli` (`python bench/cli_startup.py --runs {runs}`)",
        f"- machine: {machine()}; load average {load:.2f} when the runs began (the machine is shared)",
        f"- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="Runs of each command.")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="Markdown file to update.")
    parser.add_argument("--print-only", action="store_true", help="Print the section; leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    body = report(measure(args.runs), args.runs, load)
    print(body)
    if not args.print_only:
        write_section(SECTION, body, args.output)


if __name__ == "__main__":
    main()
