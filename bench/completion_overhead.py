"""What the registry adds over calling vLLM directly, measured side by side in one run.

Starts (or reuses) a vLLM on the CPU and the registry as a real server process
(`registry serve`, one worker, SQLite; granian, or uvicorn with ``--server uvicorn``), then streams the same chat
completion both ways at each concurrency level, alternating the order round by
round. Reported per level: p50/p99 latency, p50/p99 time to first token and
throughput, as medians over the rounds. The overhead (added p50, added TTFT,
throughput ratio) is the median of the per-round differences, since the two
runs of one round share the machine's conditions.

    python bench/completion_overhead.py [--rounds 3] [--levels 1,16,64] [--vllm-url URL] [--server uvicorn]

Every completion generates exactly ``--tokens`` tokens (``ignore_eos``), so
both paths do the same work. Results go to bench/results/ as JSON and are
printed as a Markdown table.

On a small machine the engine, the registry and this load generator compete
for the same cores. ``--pin`` gives vLLM the first core and the registry and
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
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, machine, write_section  # noqa: E402

SECTION = "## Completion proxy overhead"  # granian's; other servers' sections add the name
JSON = {"Content-Type": "application/json"}
DATABASE = "bench.db"  # the registry's, in the run's scratch directory
# Columns measured on the registry path only: the summary's key and the ``Level`` field it is the median of.
REGISTRY_ONLY = {
    "registry_cpu_ms": "registry_cpu_ms",
    "registry_edge_p50_ms": "edge_p50_ms",
    "registry_edge_ttft_p50_ms": "edge_ttft_p50_ms",
}
VLLM_SCRIPT = ROOT / "scripts" / "vllm-cpu.sh"
PROMPT = "Summarize the following in one line: {{ text }}"
TEXT = "the registry renders prompts and forwards them to the engine"


@dataclass
class Sample:
    ttft: float
    latency: float
    tokens: int
    request_id: str | None = None  # the registry's, to find what it recorded for this completion


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
    # Registry path only: the caller's latency (and time to first token) minus what the registry recorded for the
    # same completion, from its handler's start to the last (first) upstream token; medians over the requests.
    edge_p50_ms: float | None = None
    edge_ttft_p50_ms: float | None = None


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and its descendants (granian runs workers as children)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += process_cpu_seconds(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def direct(session: aiohttp.ClientSession, url: str, payload: bytes) -> Sample:
    """vLLM's stream, parsed only as far as the numbers need: the first chunks up to the first token, then the usage."""
    started = time.perf_counter()
    ttft, tokens = 0.0, 0
    async with session.post(f"{url}/v1/chat/completions", data=payload, headers=JSON) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            if not ttft:
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    ttft = time.perf_counter() - started
            if b'"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return Sample(ttft, time.perf_counter() - started, tokens)


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

    async def worker(count: int) -> None:
        for _ in range(count):
            samples.append(await call())

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
    edges: list[tuple[float, float]] = []
    if database is not None:
        inside = await recorded(database, [s.request_id for s in samples if s.request_id])
        edges = [
            (s.latency * 1000 - inside[s.request_id][1], s.ttft * 1000 - inside[s.request_id][0])
            for s in samples
            if s.request_id
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
    )


def start_registry(
    vllm_url: str, workdir: Path, tokens: int, server: str
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    from registry.cli import bootstrap_admin_key_for, migrate_database
    from registry.settings import Settings

    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("REGISTRY_")}
    env |= {
        "REGISTRY_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / DATABASE}",
        "REGISTRY_BACKENDS": json.dumps({"local": {"url": vllm_url, "max_concurrency": 256, "max_queue": 256}}),
        "REGISTRY_ACCESS_LOG": "false",
        "REGISTRY_LOG_LEVEL": "WARNING",
        "REGISTRY_PORT": str(port),
        "REGISTRY_SERVER": server,
        "REGISTRY_BOOTSTRAP_ADMIN_KEY": "false",
    }
    settings = Settings(database_url=env["REGISTRY_DATABASE_URL"])
    asyncio.run(migrate_database(settings))
    secret = asyncio.run(bootstrap_admin_key_for(settings))
    assert secret
    process = subprocess.Popen(
        [sys.executable, "-c", "from registry.cli import main; main()", "serve", "--no-migrate"], env=env
    )
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
        params = {"max_tokens": tokens, "temperature": 0.8, "extra": {"ignore_eos": True}}
        steps = [
            ("/v1/configs/", {"name": "bench"}),
            ("/v1/configs/bench/versions", {"backend": "local", "model": "tiny", "params": params}),
            ("/v1/configs/bench/versions/1/promote", {"to": "production", "expected_current": None}),
            ("/v1/prompts/", {"name": "bench"}),
            (
                "/v1/prompts/bench/versions",
                {
                    "kind": "chat",
                    "messages": [{"role": "user", "content": PROMPT}],
                    "config": {"name": "bench", "version": 1},
                },
            ),
            ("/v1/prompts/bench/versions/1/promote", {"to": "production", "expected_current": None}),
        ]
        for path, body in steps:
            client.post(path, json=body).raise_for_status()
    return process, url, headers


async def run(
    args: argparse.Namespace,
    vllm_url: str,
    registry_url: str,
    headers: dict[str, str],
    registry_pid: int,
    database: Path,
) -> list[Level]:
    payload = {
        "model": "tiny",
        "messages": [{"role": "user", "content": PROMPT.replace("{{ text }}", TEXT)}],
        "max_tokens": args.tokens,
        "temperature": 0.8,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body = json.dumps(payload).encode()
    # Idle connections expire before the servers' 5 s keep-alive, so none is reused as it closes.
    connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=2.0)
    results: list[Level] = []
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        calls = {
            "direct": lambda: direct(session, vllm_url, body),
            "registry": lambda: via_registry(session, registry_url, headers),
        }
        for name in calls:  # warm up connections, caches and the engine
            await measure(name, 4, 16, calls[name])
        for round_number in range(args.rounds):
            for concurrency in args.levels:
                order = ["direct", "registry"] if round_number % 2 == 0 else ["registry", "direct"]
                for name in order:
                    requests = max(args.requests, concurrency * 3)
                    pid, db = (registry_pid, database) if name == "registry" else (None, None)
                    level = await measure(name, concurrency, requests, calls[name], pid, round_number + 1, db)
                    results.append(level)
                    print(f"round {round_number + 1} {json.dumps(asdict(level))}", file=sys.stderr)
    return results


def summarize(results: list[Level], levels: list[int]) -> list[dict[str, Any]]:
    table = []
    for concurrency in levels:
        row: dict[str, Any] = {"concurrency": concurrency}
        for path in ("direct", "registry"):
            runs = [r for r in results if r.path == path and r.concurrency == concurrency]
            for metric in ("p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms", "requests_per_s", "tokens_per_s"):
                row[f"{path}_{metric}"] = round(statistics.median(getattr(r, metric) for r in runs), 2)
            row[f"{path}_client_cpu_ms"] = round(statistics.median(r.client_cpu_ms for r in runs), 2)
        registry_runs = [r for r in results if r.path == "registry" and r.concurrency == concurrency]
        for key, metric in REGISTRY_ONLY.items():
            row[key] = round(statistics.median(getattr(r, metric) or 0.0 for r in registry_runs), 2)
        pairs = [
            (d, r)
            for d in results
            for r in results
            if d.path == "direct"
            and r.path == "registry"
            and d.round == r.round
            and d.concurrency == concurrency == r.concurrency
        ]
        row["added_p50_ms"] = round(statistics.median(r.p50_ms - d.p50_ms for d, r in pairs), 2)
        row["added_ttft_p50_ms"] = round(statistics.median(r.ttft_p50_ms - d.ttft_p50_ms for d, r in pairs), 2)
        row["throughput_ratio"] = round(statistics.median(r.tokens_per_s / d.tokens_per_s for d, r in pairs), 3)
        row["throughput_ratio_range"] = [
            round(min(r.tokens_per_s / d.tokens_per_s for d, r in pairs), 3),
            round(max(r.tokens_per_s / d.tokens_per_s for d, r in pairs), 3),
        ]
        table.append(row)
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| streams | p50 direct / registry (ms) | p99 direct / registry (ms) | TTFT p50 direct / registry (ms) "
        "| tokens/s direct / registry | added p50 | added TTFT p50 | throughput ratio (range) "
        "| registry CPU per completion | registry's own time, p50 (end / first token) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        lines.append(
            f"| {row['concurrency']} | {row['direct_p50_ms']} / {row['registry_p50_ms']} "
            f"| {row['direct_p99_ms']} / {row['registry_p99_ms']} "
            f"| {row['direct_ttft_p50_ms']} / {row['registry_ttft_p50_ms']} "
            f"| {row['direct_tokens_per_s']} / {row['registry_tokens_per_s']} "
            f"| {row['added_p50_ms']} ms | {row['added_ttft_p50_ms']} ms "
            f"| {row['throughput_ratio']} ({row['throughput_ratio_range'][0]}-{row['throughput_ratio_range'][1]}) "
            f"| {row['registry_cpu_ms']} ms "
            f"| {row['registry_edge_p50_ms']} / {row['registry_edge_ttft_p50_ms']} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--requests", type=int, default=48, help="Requests per level (at least 3 per stream).")
    parser.add_argument("--tokens", type=int, default=32, help="Tokens generated per completion.")
    parser.add_argument("--vllm-url", help="Use this running vLLM instead of starting one.")
    parser.add_argument("--server", choices=["granian", "uvicorn"], default="granian", help="The registry's server.")
    parser.add_argument("--pin", action="store_true", help="vLLM on core 0; the registry and the client on the rest.")
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args()
    args.levels = [int(level) for level in args.levels.split(",")]
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and len(cores) < 2:
        parser.error("--pin needs at least two cores")

    vllm_port = None
    vllm_url = args.vllm_url
    if not vllm_url:
        vllm_port = free_port()
        command = [str(VLLM_SCRIPT), "start", str(vllm_port)]
        env = dict(os.environ)
        if args.pin:
            command = ["taskset", "-c", str(cores[0]), *command]
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(cores[0])
        started = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        vllm_url = started.stdout.strip().splitlines()[-1]
    if args.pin:
        os.sched_setaffinity(0, cores[1:])  # the registry (a child) inherits it
    with tempfile.TemporaryDirectory() as workdir:
        registry, registry_url, headers = start_registry(vllm_url, Path(workdir), args.tokens, args.server)
        try:
            results = asyncio.run(run(args, vllm_url, registry_url, headers, registry.pid, Path(workdir) / DATABASE))
        finally:
            registry.terminate()
            registry.wait(10)
            if vllm_port is not None:
                subprocess.run([str(VLLM_SCRIPT), "stop", str(vllm_port)], check=False)
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
        write_section(section_title(args.server), body)


def section_title(server: str) -> str:
    return SECTION if server == "granian" else f"{SECTION} ({server})"


def section(table: list[dict[str, Any]], args: argparse.Namespace) -> str:
    placement = (
        "vLLM pinned to core 0; the registry and the load generator on the other cores"
        if args.pin
        else "vLLM, the registry and the load generator sharing every core"
    )
    command = " ".join(["python bench/completion_overhead.py", *sys.argv[1:]])
    return f"""{section_title(args.server)}

What the registry adds over calling vLLM directly: the same streamed chat completion ({args.tokens} tokens,
`ignore_eos`, so both paths do identical engine work), sent directly to vLLM's `/v1/chat/completions` and
through `POST /v1/prompts/{{name}}/complete` with `stream: true`, side by side in one run. Each of
{args.rounds} rounds measures both paths at {", ".join(map(str, args.levels))} concurrent streams,
alternating which path goes first. The added p50, added TTFT and throughput ratio are medians of the
per-round differences (both runs of a round share the machine's conditions); the other columns are
medians over the rounds. Registry CPU is read from `/proc` for the registry process and its workers.
The registry's own time is the caller's latency (and time to first token) minus what the registry
recorded for the same request (found by `X-Request-ID`), from its handler's start to the last (first)
upstream token: what it adds around the engine call, whatever the engine's speed (an upper bound: it also
holds the load generator's own handling of one request, which a direct call has too). The load generator
(aiohttp) parses only what it measures.
Engine: `vllm-cpu` serving the tiny random-weight Llama of `scripts/make_tiny_model.py`; registry:
`registry serve` ({args.server}, one worker, SQLite, usage recorded as in production); {placement}.

{markdown(table)}

- command: `{command}` (`make bench-completions` runs it with `--pin`, under granian and uvicorn)
- machine: {machine()}
- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC
"""


if __name__ == "__main__":
    main()
