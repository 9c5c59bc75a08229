"""Benchmark: memory under sustained load: the serving process's RSS must not keep growing.

Starts the service as deployed (granian API process, a worker process, PostgreSQL
and Redis at 127.0.0.1) and drives the fast path with wrk for ``--minutes``
(10 by default): renders with a new unit on every request (so assignment,
exposures and their buffers work all the time) interleaved with resolves.
The API worker's RSS is sampled every ``--sample`` seconds; the report compares
the first and the last minute and fits a slope over the second half.

Run: ``make bench-soak`` (or ``python bench/soak.py``); results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import PATH, deployment, machine, require_wrk, write_section  # noqa: E402
from bench.hot_path import RENDER_UNIT_LUA  # noqa: E402

SECTION = "## Memory under load"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no RSS for {pid}")


def serving_pid(parent: int) -> int:
    """granian serves from a child process; the parent only supervises."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return int(children[0]) if children else parent


def slope_mb_per_minute(samples: list[tuple[float, float]]) -> float:
    xs = [t / 60 for t, _ in samples]
    ys = [m for _, m in samples]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0


def run(minutes: float, sample: float, connections: int) -> dict[str, object]:
    samples: list[tuple[float, float]] = []
    with deployment() as service, tempfile.TemporaryDirectory() as scratch:
        pid = serving_pid(service.api_pid)
        script = Path(scratch) / "load.lua"
        script.write_text('run = "soak"\n' + RENDER_UNIT_LUA)
        command = [
            "wrk", "-t1", f"-c{connections}", f"-d{int(minutes * 60)}s",
            "-H", f"Authorization: Bearer {service.secret}", "-H", "Content-Type: application/json",
            "-s", str(script), f"{service.base}/v1/prompts/{PATH}/render",
        ]  # fmt: skip
        load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        while load.poll() is None:
            samples.append((time.monotonic() - started, rss_mb(pid)))
            time.sleep(sample)
        output = load.communicate()[0]
    requests = next((line.strip() for line in output.splitlines() if "requests in" in line), "")
    return {"samples": samples, "requests": requests}


def report(result: dict[str, object], args: argparse.Namespace) -> str:
    samples: list[tuple[float, float]] = result["samples"]  # type: ignore[assignment]
    first = [m for t, m in samples if t <= 60]
    last = [m for t, m in samples if t >= samples[-1][0] - 60]
    second_half = [(t, m) for t, m in samples if t >= samples[-1][0] / 2]
    return "\n".join(
        [
            SECTION,
            "",
            f"{args.minutes:g} minutes of renders, each with a new unit (assignment and a first exposure every "
            f"request), {args.connections} connections, one granian API process and one worker: "
            f"{result['requests']}.",
            "",
            "| API process RSS | MB |",
            "| --- | ---: |",
            f"| median, first minute | {statistics.median(first):.1f} |",
            f"| median, last minute | {statistics.median(last):.1f} |",
            f"| peak | {max(m for _, m in samples):.1f} |",
            f"| slope over the second half | {slope_mb_per_minute(second_half):+.2f} MB/min |",
            "",
            f"- command: `make bench-soak` (`python bench/soak.py --minutes {args.minutes:g}`)",
            f"- machine: {machine()}",
            f"- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--sample", type=float, default=10, help="Seconds between RSS samples.")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args()
    require_wrk()
    body = report(run(args.minutes, args.sample, args.connections), args)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
