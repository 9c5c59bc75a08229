"""What the registry adds over calling the backend directly, measured side by side in one run.

Starts (or reuses) a vLLM on the CPU, or with ``--stand-in`` the tests' fault server streaming tokens on a fixed
schedule (so that the engine's varying speed does not hide the proxies' differences), and the registry as a real
server process (served as `registry serve` serves it, one worker, SQLite; granian, or uvicorn with
``--server uvicorn``), then streams the same chat completion four ways at each concurrency level:
directly, through the registry's ``/complete``, through its OpenAI-compatible ``/v1/chat/completions``
(``model: prompt:bench``), and through a bare relay in the registry's process (``/bench/relay`` of
bench/app.py: the floor of any proxy on the same server and HTTP client), rotating the order round by round.
Reported per level: p50/p99 latency, p50/p99 time to first token and throughput, as medians over the rounds.
The overheads (added p50, added TTFT, throughput ratios) are medians of the per-round differences, since the
runs of one round share the machine's conditions.

    python bench/completion_overhead.py [--rounds 3] [--levels 1,16,64,128] [--vllm-url URL | --stand-in 0.01]
        [--server uvicorn] [--pin]

Every completion generates exactly ``--tokens`` tokens (``ignore_eos``), so
every path does the same engine work. Results go to bench/results/ as JSON and are
printed as a Markdown table.

On a small machine the engine, the registry and this load generator compete
for the same cores. ``--pin`` gives the backend the first core and the registry and
the load generator the others (as in production, where the engine has its own
GPU machine); without it they all share every core. The registry's own CPU
time per completion is reported either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import COMPLETION_PROMPT as PROMPT  # noqa: E402
from bench.common import COMPLETION_TEXT as TEXT  # noqa: E402
from bench.common import completion_setup, fault_server, free_port, machine, write_section  # noqa: E402

SECTION = "## Completion proxy overhead"  # granian's; other servers' sections add the name
JSON = {"Content-Type": "application/json"}
DATABASE = "bench.db"  # the registry's, in the run's scratch directory
VLLM_SCRIPT = ROOT / "scripts" / "vllm-cpu.sh"
BENCH_APP = "bench.app:create_bench_app"  # the service plus bare routes, served as `registry serve` serves it
PATHS = ("direct", "relay", "registry", "openai", "raw_relay")
USAGE = re.compile(rb'"usage": ?\{')  # the closing chunk's (vLLM writes compact JSON, the stand-in json.dumps')
# (path, baseline) pairs reported: what the registry adds, the server's floor, and the registry's own work over it
# (through /complete and through the OpenAI-compatible endpoint).
COMPARISONS = (
    ("registry", "direct"),
    ("relay", "direct"),
    ("registry", "relay"),
    ("openai", "direct"),
    ("openai", "relay"),
    ("raw_relay", "direct"),
)
RECORDED_PATHS = ("registry", "openai")  # the paths whose completions the registry records


@dataclass
class Sample:
    ttft: float
    latency: float
    tokens: int
    request_id: str | None = None  # the registry's, to find what it recorded for this completion
    # What the server recorded for this completion, time to first token and latency (ms): from the registry's
    # database, or from the relay's closing comment.
    recorded: tuple[float, float] | None = None


@dataclass
class Level:
    round: int
    path: str
    concurrency: int
    requests: int
    client_cpu_ms: float  # this load generator's CPU per completion
    registry_cpu_ms: float | None  # the registry process's CPU per completion
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    requests_per_s: float
    tokens_per_s: float
    # Registry and relay: the caller's latency (and time to first token) minus what the server recorded for the
    # same completion, from its handler's start to the last (first) upstream token; medians over the requests.
    edge_p50_ms: float | None = None
    edge_ttft_p50_ms: float | None = None
    broken: int = 0  # completions broken off mid-stream and sent again (their time counts, not their numbers)


def process_cpu_seconds(pid: int) -> float:
    """The CPU time of a process (all its threads, ended ones included) and its descendants (granian runs workers
    as children), to the nanosecond.

    Read from the process's CPU clock (Linux: the clock id of ``clock_getcpuclockid``, the scheduler's own count),
    not from ``/proc/PID/stat``, which counts in ticks of 10 ms: at 16 streams a level's 48 completions take
    about 80 ms of the registry's CPU, so ticks would round each path's figure to an eighth of itself.
    """
    total = 0.0
    try:
        total = time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the whole process ``pid``
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += process_cpu_seconds(int(child))
    except (FileNotFoundError, ProcessLookupError, OSError):
        pass
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def direct(
    session: aiohttp.ClientSession, endpoint: str, payload: bytes, headers: dict[str, str] | None = None
) -> Sample:
    """An OpenAI stream, parsed only as far as the numbers need: the chunks up to the first token, then the usage.

    ``endpoint`` is the backend's ``/v1/chat/completions``, the bench app's relay of it, or the registry's
    OpenAI-compatible endpoint (with the key in ``headers``).
    """
    started = time.perf_counter()
    ttft, tokens, recorded = 0.0, 0, None
    async with session.post(endpoint, data=payload, headers={**JSON, **(headers or {})}) as response:
        response.raise_for_status()
        request_id = response.headers.get("x-request-id")
        async for line in response.content:
            if line.startswith(b": relay "):  # the relay's own timings: ttft_ms=... latency_ms=...
                ttft_ms, latency_ms = (float(field.split(b"=")[1]) for field in line[8:].split())
                recorded = (ttft_ms, latency_ms)
            if not line.startswith(b"data: {"):
                continue
            if not ttft:
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    ttft = time.perf_counter() - started
            if USAGE.search(line):
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return Sample(ttft, time.perf_counter() - started, tokens, request_id, recorded=recorded)


async def via_registry(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Sample:
    started = time.perf_counter()
    ttft, tokens, event = 0.0, 0, b""
    body = json.dumps({"variables": {"text": TEXT}, "stream": True}).encode()
    async with session.post(f"{url}/v1/prompts/bench/complete", data=body, headers={**headers, **JSON}) as response:
        response.raise_for_status()
        request_id = response.headers.get("x-request-id")
        async for line in response.content:
            if line.startswith(b"event: "):
                event = line[7:].rstrip()
            elif line.startswith(b"data: "):
                if event == b"delta" and not ttft:
                    ttft = time.perf_counter() - started
                elif event == b"done":
                    tokens = json.loads(line[6:])["usage"]["output_tokens"]
                elif event == b"error":
                    raise RuntimeError(line.decode())
    return Sample(ttft, time.perf_counter() - started, tokens, request_id)


async def recorded(database: Path, request_ids: list[str]) -> dict[str, tuple[float, float]]:
    """What the registry recorded per completion (time to first token, latency; ms), once its buffer is written."""
    found: dict[str, tuple[float, float]] = {}
    placeholders = ",".join("?" * len(request_ids))
    deadline = time.monotonic() + 30
    while len(found) < len(request_ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        with sqlite3.connect(database) as connection:
            rows = connection.execute(
                f"SELECT request_id, ttft_ms, latency_ms FROM completions WHERE request_id IN ({placeholders})",
                request_ids,
            ).fetchall()
        found = {request_id: (ttft, latency) for request_id, ttft, latency in rows}
    if len(found) < len(request_ids):
        raise RuntimeError(f"the registry recorded {len(found)} of {len(request_ids)} completions")
    return found


async def measure(
    path: str,
    concurrency: int,
    requests: int,
    call: Any,
    registry_pid: int | None = None,
    round_number: int = 0,
    database: Path | None = None,
) -> Level:
    samples: list[Sample] = []
    broken = 0

    async def worker(count: int) -> None:
        nonlocal broken
        done = 0
        while done < count:
            try:
                samples.append(await call())
            except aiohttp.ClientPayloadError:  # a connection broken off mid-stream (seen under heavy load): again
                broken += 1
                if broken > requests // 10:
                    raise
                continue
            done += 1

    share, extra = divmod(requests, concurrency)
    registry_cpu = process_cpu_seconds(registry_pid) if registry_pid else 0.0
    client_cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(share + (1 if i < extra else 0)) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    registry_cpu = process_cpu_seconds(registry_pid) - registry_cpu if registry_pid else 0.0
    latencies = [s.latency * 1000 for s in samples]
    ttfts = [s.ttft * 1000 for s in samples]
    if database is not None:
        inside = await recorded(database, [s.request_id for s in samples if s.request_id])
        for sample in samples:
            if sample.request_id:
                sample.recorded = inside[sample.request_id]
    edges = [
        (s.latency * 1000 - s.recorded[1], s.ttft * 1000 - s.recorded[0]) for s in samples if s.recorded is not None
    ]
    return Level(
        round=round_number,
        path=path,
        concurrency=concurrency,
        requests=len(samples),
        client_cpu_ms=round(client_cpu * 1000 / len(samples), 2),
        registry_cpu_ms=round(registry_cpu * 1000 / len(samples), 2) if registry_pid else None,
        p50_ms=round(percentile(latencies, 0.5), 2),
        p99_ms=round(percentile(latencies, 0.99), 2),
        ttft_p50_ms=round(percentile(ttfts, 0.5), 2),
        ttft_p99_ms=round(percentile(ttfts, 0.99), 2),
        requests_per_s=round(len(samples) / elapsed, 2),
        tokens_per_s=round(sum(s.tokens for s in samples) / elapsed, 1),
        edge_p50_ms=round(statistics.median(e for e, _ in edges), 2) if edges else None,
        edge_ttft_p50_ms=round(statistics.median(e for _, e in edges), 2) if edges else None,
        broken=broken,
    )


def start_registry(
    upstream_url: str, model: str, workdir: Path, tokens: int, server: str
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    from registry.cli import bootstrap_admin_key_for, migrate_database
    from registry.settings import Settings

    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("REGISTRY_")}
    env |= {
        "REGISTRY_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / DATABASE}",
        "REGISTRY_BACKENDS": json.dumps({"local": {"url": upstream_url, "max_concurrency": 256, "max_queue": 256}}),
        "REGISTRY_ACCESS_LOG": "false",
        "REGISTRY_LOG_LEVEL": "WARNING",
        "REGISTRY_PORT": str(port),
        "REGISTRY_SERVER": server,
        "REGISTRY_BOOTSTRAP_ADMIN_KEY": "false",
        "BENCH_RELAY_UPSTREAM": upstream_url,  # bench/app.py's relay: the same server's floor
        "PYTHONPATH": str(ROOT),
    }
    settings = Settings(database_url=env["REGISTRY_DATABASE_URL"])
    asyncio.run(migrate_database(settings))
    secret = asyncio.run(bootstrap_admin_key_for(settings))
    assert secret
    serve = "from registry.cli import run_server; from registry.settings import Settings; run_server(Settings(), {!r})"
    process = subprocess.Popen([sys.executable, "-c", serve.format(BENCH_APP)], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {secret}"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    with httpx.Client(base_url=url, headers=headers) as client:
        steps = completion_setup(model, tokens)
        for path, body in steps:
            client.post(path, json=body).raise_for_status()
    return process, url, headers


async def run(
    args: argparse.Namespace,
    upstream_url: str,
    model: str,
    registry_url: str,
    headers: dict[str, str],
    registry_pid: int,
    database: Path,
) -> list[Level]:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT.replace("{{ text }}", TEXT)}],
        "max_tokens": args.tokens,
        "temperature": 0.8,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    body = json.dumps(payload).encode()
    # The same completion through the OpenAI-compatible endpoint: the prompt's own message, rendered by the registry.
    openai_body = json.dumps(
        {
            "model": "prompt:bench",
            "messages": [],
            "variables": {"text": TEXT},
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    # Idle connections expire before the servers' 5 s keep-alive, so none is reused as it closes.
    connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=2.0)
    results: list[Level] = []
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        calls = {
            "direct": lambda: direct(session, f"{upstream_url}/v1/chat/completions", body),
            "relay": lambda: direct(session, f"{registry_url}/bench/relay", body),
            "registry": lambda: via_registry(session, registry_url, headers),
            "openai": lambda: direct(session, f"{registry_url}/v1/chat/completions", openai_body, headers),
            "raw_relay": lambda: direct(session, f"{registry_url}/bench/raw-relay", body),
        }
        for name in calls:  # warm up connections, caches and the engine
            await measure(name, 4, 16, calls[name])
        for round_number in range(args.rounds):
            for concurrency in args.levels:
                shift = round_number % len(PATHS)
                for name in PATHS[shift:] + PATHS[:shift]:
                    requests = max(args.requests, concurrency * 3)
                    pid = None if name == "direct" else registry_pid
                    db = database if name in RECORDED_PATHS else None
                    level = await measure(name, concurrency, requests, calls[name], pid, round_number + 1, db)
                    results.append(level)
                    print(f"round {round_number + 1} {json.dumps(asdict(level))}", file=sys.stderr)
    return results


def paired(results: list[Level], concurrency: int, baseline: str, path: str) -> list[tuple[Level, Level]]:
    """The runs of ``baseline`` and ``path`` at one level, paired by round (they share the machine's conditions)."""
    return [
        (b, r)
        for b in results
        for r in results
        if (b.path, r.path) == (baseline, path) and b.round == r.round and b.concurrency == concurrency == r.concurrency
    ]


def summarize(results: list[Level], levels: list[int]) -> list[dict[str, Any]]:
    table = []
    for concurrency in levels:
        row: dict[str, Any] = {"concurrency": concurrency}
        row["broken"] = sum(r.broken for r in results if r.concurrency == concurrency)
        for path in PATHS:
            runs = [r for r in results if r.path == path and r.concurrency == concurrency]
            for metric in ("p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms", "requests_per_s", "tokens_per_s"):
                row[f"{path}_{metric}"] = round(statistics.median(getattr(r, metric) for r in runs), 2)
            row[f"{path}_client_cpu_ms"] = round(statistics.median(r.client_cpu_ms for r in runs), 2)
            if path != "direct":  # served by the registry's process: its CPU per completion
                row[f"{path}_cpu_ms"] = round(statistics.median(r.registry_cpu_ms or 0.0 for r in runs), 2)
                row[f"{path}_edge_p50_ms"] = round(statistics.median(r.edge_p50_ms or 0.0 for r in runs), 2)
                row[f"{path}_edge_ttft_p50_ms"] = round(statistics.median(r.edge_ttft_p50_ms or 0.0 for r in runs), 2)
        for path in RECORDED_PATHS:  # CPU per completion over the relays', round by round (a round shares the load)
            for floor, key in (("relay", "cpu_ratio"), ("raw_relay", "cpu_ratio_raw")):
                cpu = [
                    r.registry_cpu_ms / b.registry_cpu_ms
                    for b, r in paired(results, concurrency, floor, path)
                    if r.registry_cpu_ms and b.registry_cpu_ms
                ]
                row[f"{path}_{key}"] = round(statistics.median(cpu), 2) if cpu else None
        for path, baseline in COMPARISONS:
            pairs = paired(results, concurrency, baseline, path)
            ratios = [r.tokens_per_s / b.tokens_per_s for b, r in pairs]
            row[f"{path}_vs_{baseline}"] = {
                "added_p50_ms": round(statistics.median(r.p50_ms - b.p50_ms for b, r in pairs), 2),
                "added_ttft_p50_ms": round(statistics.median(r.ttft_p50_ms - b.ttft_p50_ms for b, r in pairs), 2),
                "throughput_ratio": round(statistics.median(ratios), 3),
                "throughput_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            }
        table.append(row)
    return table


HEADLINE_PATHS = (
    ("registry", "`/complete`"),
    ("openai", "OpenAI door"),
    ("relay", "bare relay"),
    ("raw_relay", "relay in front of Litestar"),
)


def headline(table: list[dict[str, Any]]) -> str:
    """The issue's table: per level, `/complete`, the OpenAI door and both relays against the direct call."""
    lines = [
        "| streams | path | added p50 | CPU per completion | CPU / relay's (median of rounds) "
        "| CPU / relay in front of Litestar's | throughput / direct |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        for path, label in HEADLINE_PATHS:
            added = row[f"{path}_vs_direct"]
            ratio_cell = {"relay": "1", "raw_relay": "-"}.get(path) or f"{row[f'{path}_cpu_ratio']}"
            raw_cell = {"relay": "-", "raw_relay": "1"}.get(path) or f"{row[f'{path}_cpu_ratio_raw']}"
            lines.append(
                f"| {row['concurrency']} | {label} | {added['added_p50_ms']} ms | {row[f'{path}_cpu_ms']} ms "
                f"| {ratio_cell} | {raw_cell} | {ratio(added)} |"
            )
    return "\n".join(lines)


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        headline(table),
        "",
        "In detail, `/complete` against the direct call:",
        "",
        "| streams | p50 direct / registry (ms) | p99 direct / registry (ms) | TTFT p50 direct / registry (ms) "
        "| tokens/s direct / registry | added p50 | added TTFT p50 | throughput ratio (range) "
        "| registry CPU per completion | registry's own time, p50 (end / first token) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        added = row["registry_vs_direct"]
        lines.append(
            f"| {row['concurrency']} | {row['direct_p50_ms']} / {row['registry_p50_ms']} "
            f"| {row['direct_p99_ms']} / {row['registry_p99_ms']} "
            f"| {row['direct_ttft_p50_ms']} / {row['registry_ttft_p50_ms']} "
            f"| {row['direct_tokens_per_s']} / {row['registry_tokens_per_s']} "
            f"| {added['added_p50_ms']} ms | {added['added_ttft_p50_ms']} ms | {ratio(added)} "
            f"| {row['registry_cpu_ms']} ms "
            f"| {row['registry_edge_p50_ms']} / {row['registry_edge_ttft_p50_ms']} ms |"
        )
    lines += [
        "",
        "The same server's floor: a bare relay (`/bench/relay`, bench/app.py) in the registry's process, which "
        "streams the backend's bytes back unchanged, measured in the same rounds.",
        "",
        "| streams | relay's added p50 / TTFT p50 | own time p50, relay / registry (end) "
        "| own time p50, relay / registry (first token) | CPU per completion, relay / registry "
        "| throughput ratio relay / direct | throughput ratio registry / relay |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        floor = row["relay_vs_direct"]
        lines.append(
            f"| {row['concurrency']} | {floor['added_p50_ms']} / {floor['added_ttft_p50_ms']} ms "
            f"| {row['relay_edge_p50_ms']} / {row['registry_edge_p50_ms']} ms "
            f"| {row['relay_edge_ttft_p50_ms']} / {row['registry_edge_ttft_p50_ms']} ms "
            f"| {row['relay_cpu_ms']} / {row['registry_cpu_ms']} ms "
            f"| {ratio(row['relay_vs_direct'])} | {ratio(row['registry_vs_relay'])} |"
        )
    lines += [
        "",
        "The OpenAI-compatible endpoint (`POST /v1/chat/completions`, `model: prompt:bench`, `include_usage`) in "
        "the same rounds, beside `/complete` and the relay: added p50 over the direct call, the p50 over the "
        "relay's (the median of the rounds' differences: each round's paths share the machine's conditions), and CPU "
        "per completion as a ratio to the relay's.",
        "",
        "| streams | added p50, OpenAI / `/complete` / relay | p50 over the relay's, OpenAI / `/complete` "
        "| added TTFT p50, OpenAI / relay "
        "| own time p50, OpenAI (end / first token) | CPU per completion, OpenAI / `/complete` / relay "
        "| CPU ratio to the relay, OpenAI / `/complete` | throughput ratio OpenAI / direct |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        door, complete, floor = row["openai_vs_direct"], row["registry_vs_direct"], row["relay_vs_direct"]
        relay_cpu = row["relay_cpu_ms"] or float("nan")
        lines.append(
            f"| {row['concurrency']} "
            f"| {door['added_p50_ms']} / {complete['added_p50_ms']} / {floor['added_p50_ms']} ms "
            f"| {row['openai_vs_relay']['added_p50_ms']:+.2f} / {row['registry_vs_relay']['added_p50_ms']:+.2f} ms "
            f"| {door['added_ttft_p50_ms']} / {floor['added_ttft_p50_ms']} ms "
            f"| {row['openai_edge_p50_ms']} / {row['openai_edge_ttft_p50_ms']} ms "
            f"| {row['openai_cpu_ms']} / {row['registry_cpu_ms']} / {row['relay_cpu_ms']} ms "
            f"| {row['openai_cpu_ms'] / relay_cpu:.2f} / {row['registry_cpu_ms'] / relay_cpu:.2f} "
            f"| {ratio(door)} |"
        )
    return "\n".join(lines)


def ratio(comparison: dict[str, Any]) -> str:
    low, high = comparison["throughput_ratio_range"]
    return f"{comparison['throughput_ratio']} ({low}-{high})"


@contextmanager
def upstream(args: argparse.Namespace, cores: list[int]) -> Iterator[tuple[str, str]]:
    """The backend's URL and model name: a vLLM (started here unless ``--vllm-url``), or the stand-in."""
    pin = ["taskset", "-c", str(cores[0])] if args.pin else []
    if args.stand_in is not None:
        with fault_server(pin) as url:
            yield url, f"trickle:{args.stand_in}"
        return
    if args.vllm_url:
        yield args.vllm_url, "tiny"
        return
    port = free_port()
    env = dict(os.environ)
    if args.pin:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(cores[0])
    started = subprocess.run(
        [*pin, str(VLLM_SCRIPT), "start", str(port)], capture_output=True, text=True, check=True, env=env
    )
    try:
        yield started.stdout.strip().splitlines()[-1], "tiny"
    finally:
        subprocess.run([str(VLLM_SCRIPT), "stop", str(port)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1,16,64,128")
    parser.add_argument("--requests", type=int, default=48, help="Requests per level (at least 3 per stream).")
    parser.add_argument("--tokens", type=int, default=32, help="Tokens generated per completion.")
    parser.add_argument("--vllm-url", help="Use this running vLLM instead of starting one.")
    parser.add_argument(
        "--stand-in",
        type=float,
        metavar="SECONDS",
        help="Instead of vLLM, the fault server's trickle backend: one token every SECONDS, so timings do not "
        "move with an engine's speed and the paths' differences are the proxies' own.",
    )
    parser.add_argument("--server", choices=["granian", "uvicorn"], default="granian", help="The registry's server.")
    parser.add_argument(
        "--pin", action="store_true", help="The backend on core 0; the registry and the client on the rest."
    )
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args()
    args.levels = [int(level) for level in args.levels.split(",")]
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) < 2:
        parser.error("--pin needs at least two cores")

    with upstream(args, cores) as (upstream_url, model):
        if args.pin:
            os.sched_setaffinity(0, cores[1:])  # the registry (a child) inherits it
        with tempfile.TemporaryDirectory() as workdir:
            registry, registry_url, headers = start_registry(
                upstream_url, model, Path(workdir), args.tokens, args.server
            )
            try:
                results = asyncio.run(
                    run(args, upstream_url, model, registry_url, headers, registry.pid, Path(workdir) / DATABASE)
                )
            finally:
                registry.terminate()
                registry.wait(10)
    table = summarize(results, args.levels)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "pinned": args.pin,
        "rounds": args.rounds,
        "tokens_per_completion": args.tokens,
        "summary": table,
        "runs": [asdict(r) for r in results],
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"completion_overhead_{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    body = section(table, args)
    print(body)
    print(f"(raw results: {path.relative_to(ROOT)})")
    if not args.no_write:
        write_section(section_title(args.server, args.stand_in), body)


def broken(table: list[dict[str, Any]]) -> str:
    count = sum(row["broken"] for row in table)
    if not count:
        return ""
    levels = ", ".join(f"{row['broken']} at {row['concurrency']}" for row in table if row["broken"])
    return f"\n- completions broken off mid-stream and sent again (their time and CPU count): {levels} streams"


def section_title(server: str, stand_in: float | None) -> str:
    if stand_in is not None:
        return f"{SECTION}, stand-in backend ({server})"
    return SECTION if server == "granian" else f"{SECTION} ({server})"


def section(table: list[dict[str, Any]], args: argparse.Namespace) -> str:
    backend = "vLLM" if args.stand_in is None else "the stand-in"
    placement = (
        f"{backend} pinned to core 0; the registry and the load generator on the other cores"
        if args.pin
        else f"{backend}, the registry and the load generator sharing every core"
    )
    engine = (
        "`vllm-cpu` serving the tiny random-weight Llama of `scripts/make_tiny_model.py`"
        if args.stand_in is None
        else f"the tests' fault server (`tests/completions/fault_server.py`, `trickle:{args.stand_in}`: one token "
        f"every {args.stand_in * 1000:g} ms, served by uvicorn),\nin place of vLLM so that the timings do not move "
        "with an engine's speed"
    )
    command = " ".join(["python bench/completion_overhead.py", *sys.argv[1:]])
    return f"""{section_title(args.server, args.stand_in)}

What the registry adds over calling the backend directly: the same streamed chat completion ({args.tokens} tokens,
`ignore_eos`, so every path does identical engine work), sent directly to the backend's `/v1/chat/completions`,
through `POST /v1/prompts/{{name}}/complete` with `stream: true`, through the OpenAI-compatible
`POST /v1/chat/completions` and through two bare relays, side by side in
one run. Each of {args.rounds} rounds measures the five paths at {", ".join(map(str, args.levels))} concurrent streams,
rotating which path goes first. The added p50, added TTFT and throughput ratios are medians of the
per-round differences (the runs of a round share the machine's conditions); the other columns are
medians over the rounds. Registry CPU is read from the CPU clocks of the registry process and its workers (to the
nanosecond; sections measured before 2026-12-05 11:00 UTC read `/proc`, in ticks of 10 ms).
The registry's own time is the caller's latency (and time to first token) minus what the registry
recorded for the same request (found by `X-Request-ID`), from its handler's start to the last (first)
upstream token: what it adds around its own clock, whatever the engine's speed. It is not the whole
overhead (what the registry does inside that clock, such as the upstream request and relaying each
token, is left out) and not only the registry's (it holds the load generator's handling of one request,
which a direct call has too). Against the stand-in backend, whose timing does not vary, the added p50
and TTFT measure the whole overhead directly. The load generator (aiohttp) parses only what it measures.
The third table measures the same server's floor: a bare relay (`/bench/relay` in bench/app.py, in the
registry's process) posts the body upstream with aiohttp and streams the bytes back unchanged, timing
itself as the registry does. What it adds and costs, any proxy on this server, client library and
machine adds and costs at least; the registry's columns beside it show what the registry's work adds.
The fourth table runs the same prompt through the OpenAI-compatible endpoint (the same completion path,
OpenAI's chunks built around each token's text) and compares it with `/complete` and the relay.
The bare relay is a Litestar route; `/complete` and the door are served in front of Litestar
(`registry/lib/front.py`), so the first table also gives each path's CPU over the same relay served
that way (`/bench/raw-relay`, the same code answered over ASGI directly): the floor of a proxy that skips
Litestar too.
Backend: {engine}; registry:
`bench/app.py` served as `registry serve` serves the app ({args.server}, one worker, SQLite, usage recorded as
in production); {placement}.
The first table sets the paths side by side at each level: what each adds to the direct call's p50,
the registry process's CPU per completion, that CPU over the relay's of the same round (the median of the
rounds' ratios: it holds on a shared machine, where the absolute figures move with the other work), and
the throughput over the direct call's.

{markdown(table)}

- command: `{command}` (`make bench-completions` runs it with `--pin` under granian and uvicorn, against
  vLLM and against the stand-in)
- machine: {machine()}{broken(table)}
- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC
"""


if __name__ == "__main__":
    main()
