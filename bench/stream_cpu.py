"""CPU per streamed completion in process: the paths of completion_overhead.py without an HTTP server.

The app (bench/app.py, SQLite, usage recorded as in production) is called directly as ASGI, each response's
parts collected in memory; the stand-in backend (the tests' fault server, ``trickle:S``) runs in its own process,
so this process's CPU (``time.process_time``) is the registry's work and its upstream sockets only. The paths:
the bare relay (``/bench/relay``, a Litestar route), ``/complete`` streamed, the OpenAI door (``prompt:bench``,
include_usage), and the same relay served in front of Litestar as those two are (``/bench/raw-relay``).
Rounds rotate the order; reported per path: the median over rounds of the CPU per completion, and of its ratio to
the relay's in the same round. ``--profile PATH`` runs that path once more under cProfile and prints the top.

    python bench/stream_cpu.py [--rounds 5] [--streams 16] [--completions 160] [--stand-in 0.002] [--profile door]

``--instructions`` counts instructions instead of CPU seconds, which another process on the machine does not move:
the script runs itself again under callgrind with instrumentation off (imports, migrations, set-up and warm-up at
near native speed) and turns it on around each path's drive only (``callgrind_control -i on``, ``-z``, ``-d``,
``-i off``, each waited for, so a drive is counted exactly), then reads each dump's total (Ir). It implies
``--fake-upstream`` (socket reads depend on timing, and valgrind slows the process 50 times). The periodic jobs are
stopped before the rounds and the process's buffers (usage records, API key use, exposures) written at the end
of each drive, inside its count: a job that ran on the clock would count more the slower valgrind ran. For the
same reason what is cached for a time (API keys, prompts, budgets) is kept for the whole run. Counted: the
user-space instructions of every thread of the process (aiosqlite's included); not counted: the kernel's work in
system calls, and other processes (PostgreSQL's server, the stand-in).

Without a server and sockets to the caller the figures are smaller than served ones and the ratios larger
(the server's share, the same for every path, is left out): it compares the paths' own work.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import COMPLETION_PROMPT as PROMPT  # noqa: E402
from bench.common import COMPLETION_TEXT as TEXT  # noqa: E402
from bench.common import admin, completion_setup, database_url, fault_server, http_scope  # noqa: E402

PATHS = ("relay", "complete", "door", "raw-relay")
CALLGRIND_DIR = "STREAM_CPU_CALLGRIND_DIR"  # set in the run under callgrind: where its dumps are written


def token_events(tokens: int) -> list[bytes]:
    """A chat stream as vLLM (and the stand-in) writes it with ``continuous_usage_stats``: one event per write."""

    def event(choices: list[dict[str, Any]], sent: int) -> bytes:
        usage = {"prompt_tokens": 7, "completion_tokens": sent, "total_tokens": 7 + sent}
        return b"data: " + json.dumps({"choices": choices, "usage": usage}).encode() + b"\n\n"

    words = ["Hello", " world", ",", " this", " is", " a", " token"]
    events = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}}], 0)]
    events += [event([{"index": 0, "delta": {"content": words[i % len(words)]}}], i + 1) for i in range(tokens)]
    events.append(event([{"index": 0, "delta": {}, "finish_reason": "length"}], tokens))
    usage = {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens}
    events.append(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


class FakeContent:
    """aiohttp's ``StreamReader`` as the registry and the relays read it: ``readany`` (a coroutine that waits for
    a read) and ``iter_any`` (an iterator whose ``__anext__`` awaits ``readany``, aiohttp's ``AsyncStreamIterator``),
    so either way of reading resumes as many coroutines per read as it does on a socket."""

    def __init__(self, events: list[bytes]) -> None:
        self._events = iter(events)

    async def readany(self) -> bytes:
        await asyncio.sleep(0)  # a turn of the event loop per read, as a socket read per token costs one
        return next(self._events, b"")

    def iter_any(self) -> FakeReads:
        return FakeReads(self.readany)


class FakeReads:
    def __init__(self, read: Callable[[], Awaitable[bytes]]) -> None:
        self._read = read

    def __aiter__(self) -> FakeReads:
        return self

    async def __anext__(self) -> bytes:
        data = await self._read()
        if data == b"":
            raise StopAsyncIteration
        return data


class FakeResponse:
    """What the registry and the relay use of aiohttp's response, with the events of ``token_events``."""

    status = 200
    headers: dict[str, str] = {}

    def __init__(self, events: list[bytes]) -> None:
        self.content = FakeContent(events)

    def __await__(self) -> Any:
        yield from asyncio.sleep(0).__await__()
        return self

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def raise_for_status(self) -> None:
        pass

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeSession:
    """In place of an aiohttp session: every post answers the same stream, without a socket."""

    def __init__(self, events: list[bytes]) -> None:
        self.events = events
        self.closed = False

    def post(self, *args: Any, **kwargs: Any) -> FakeResponse:
        return FakeResponse(self.events)

    async def close(self) -> None:
        self.closed = True


class Caller:
    """Calls an ASGI app directly: one request, its response's status and body parts as they are sent."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        sent = False
        finished = asyncio.Event()
        status = 0
        parts: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    finished.set()  # as a server does: the response is over, the connection's receive says so

        raw = [(b"content-type", b"application/json"), (b"host", b"bench")]
        raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
        path_only, _, query = path.partition("?")
        scope = http_scope(method, path_only, path_only.encode(), raw, query.encode())
        try:
            await self.app(scope, receive, send)
        finally:
            finished.set()
        return status, b"".join(parts)


async def lifespan(app: Any) -> Callable[[], Awaitable[None]]:
    """Runs the app's startup; returns what runs its shutdown."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.ensure_future(app({"type": "lifespan", "state": {}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    message = await outbox.get()
    assert message["type"] == "lifespan.startup.complete", message

    async def shutdown() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return shutdown


async def setup(call: Caller, headers: dict[str, str], model: str, tokens: int) -> None:
    steps = completion_setup(model, tokens)
    for path, body in steps:
        status, answer = await call("POST", path, json.dumps(body).encode(), headers)
        assert status < 300, (path, status, answer)


def requests(model: str, tokens: int, headers: dict[str, str]) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    relay = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT.replace("{{ text }}", TEXT)}],
        "max_tokens": tokens,
        "temperature": 0.8,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    door = {
        "model": "prompt:bench",
        "messages": [],
        "variables": {"text": TEXT},
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    complete = {"variables": {"text": TEXT}, "stream": True}
    return {
        "relay": ("/bench/relay", json.dumps(relay).encode(), {}),
        "raw-relay": ("/bench/raw-relay", json.dumps(relay).encode(), {}),
        "complete": ("/v1/prompts/bench/complete", json.dumps(complete).encode(), headers),
        "door": ("/v1/chat/completions", json.dumps(door).encode(), headers),
    }


async def stream_all(call: Caller, request: tuple[str, bytes, dict[str, str]], streams: int, completions: int) -> None:
    """``completions`` streamed through ``streams`` at a time, each checked to have ended."""
    path, body, headers = request
    left = completions

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, answer = await call("POST", path, body, headers)
            if status >= 300 or (b"[DONE]" not in answer and b"event: done" not in answer):
                raise RuntimeError(f"{path}: {status} {answer[-300:]!r}")

    await asyncio.gather(*(worker() for _ in range(streams)))


async def drive(call: Caller, request: tuple[str, bytes, dict[str, str]], streams: int, completions: int) -> float:
    """CPU seconds per completion of ``completions`` streamed through ``streams`` at a time."""
    started = time.process_time()
    await stream_all(call, request, streams, completions)
    return (time.process_time() - started) / completions


class Callgrind:
    """Counts the instructions of spans of this process, which runs under ``valgrind --tool=callgrind``.

    Each ``callgrind_control`` call is waited for, this process blocked meanwhile: a span's count starts and ends
    at the calls, what the waits themselves cost (``overhead``, measured on an empty span) is taken off.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.spans = 0
        self.overhead = 0  # until measured, next line
        self.overhead = min(self.count_empty() for _ in range(3))

    def control(self, *options: str) -> None:
        command = ["callgrind_control", *options, str(os.getpid())]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)}: {done.stdout}")

    def start(self) -> None:
        self.control("-i", "on")
        self.control("-z")

    def stop(self) -> int:
        """Instructions since ``start``, less the overhead."""
        self.spans += 1
        hint = f"span-{self.spans}"
        self.control("-d", hint)
        self.control("-i", "off")
        (dump,) = (path for path in self.folder.iterdir() if f"desc: Trigger: dump {hint}\n" in path.read_text())
        summary = next(line for line in dump.read_text().splitlines() if line.startswith("summary:"))
        dump.unlink()
        return int(summary.split()[1]) - self.overhead

    def count_empty(self) -> int:
        self.start()
        return self.stop()


async def stop_periodic_jobs(runtime: Any) -> None:
    """Cancels the runtime's periodic jobs, all at once while every one of them sleeps: none is cancelled inside
    a transaction (see the shutdown in ``main_async``)."""

    def sleeping(task: asyncio.Task[None]) -> bool:
        awaited = task.get_coro().cr_await  # type: ignore[union-attr]
        return getattr(awaited, "__qualname__", "") == "sleep"

    tasks = [task for task in runtime._tasks if not task.done()]
    while not all(sleeping(task) for task in tasks):  # noqa: ASYNC110 (no event says so)
        await asyncio.sleep(0.01)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def write_buffers(runtime: Any) -> None:
    """What the process buffered (usage records, API key use, exposures), written as the final flush does."""
    for job in runtime.jobs:
        if job.run_at_shutdown:
            await job.run()


async def count(
    meter: Callgrind,
    runtime: Any,
    call: Caller,
    request: tuple[str, bytes, dict[str, str]],
    streams: int,
    completions: int,
) -> float:
    """Instructions per completion of ``completions`` streamed through ``streams`` at a time, their writes included."""
    meter.start()
    await stream_all(call, request, streams, completions)
    await write_buffers(runtime)
    return meter.stop() / completions


async def main_async(args: argparse.Namespace, upstream: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="stream_cpu_"))
    scratch = None
    database = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    if args.database == "postgresql":  # a scratch database on the server, dropped afterwards
        scratch = f"registry_stream_cpu_{uuid.uuid4().hex[:8]}"
        await admin(f'CREATE DATABASE "{scratch}"')
        database = database_url(scratch)
    os.environ |= {
        "REGISTRY_DATABASE_URL": database,
        "REGISTRY_BACKENDS": json.dumps({"local": {"url": upstream, "max_concurrency": 256, "max_queue": 256}}),
        "REGISTRY_ACCESS_LOG": "false",
        "REGISTRY_LOG_LEVEL": os.environ.get("REGISTRY_LOG_LEVEL", "WARNING"),
        "REGISTRY_BOOTSTRAP_ADMIN_KEY": "false",
        "BENCH_RELAY_UPSTREAM": upstream,
    }
    from bench.app import RELAY_STATE, create_bench_app
    from registry.cli import bootstrap_admin_key_for, migrate_database
    from registry.completions import budgets
    from registry.settings import Settings

    if os.environ.get(CALLGRIND_DIR):
        # A key's budget is kept 30 s, then read again by every request that finds it expired (16 reads at once):
        # under valgrind that falls inside some counts and not others. Kept for the run, as the caches of
        # ``under_callgrind`` are.
        budgets._BUDGET_SECONDS = 86_400.0
    settings = Settings(database_url=os.environ["REGISTRY_DATABASE_URL"])
    await migrate_database(settings)
    secret = await bootstrap_admin_key_for(settings)
    assert secret
    headers = {"Authorization": f"Bearer {secret}"}
    app = create_bench_app()
    shutdown = await lifespan(app)
    call = Caller(app)
    model = f"trickle:{args.stand_in}"
    await setup(call, headers, model, args.tokens)
    paths = requests(model, args.tokens, headers)
    for name in PATHS:  # warm up (the backend's context size is learned on the first completion)
        await drive(call, paths[name], min(4, args.streams), 8)
    runtime = app.state.runtime
    relay = app.state[RELAY_STATE]
    real_sessions = runtime.completions.upstream.http._session, relay.session  # put back for the shutdown to close
    if args.fake_upstream:
        fake = FakeSession(token_events(args.tokens))
        runtime.completions.upstream.http._session = fake
        relay.session = fake
    meter = None
    if folder := os.environ.get(CALLGRIND_DIR):
        await stop_periodic_jobs(runtime)  # what they do would be counted by the clock, not by completion
        await write_buffers(runtime)  # the warm-up's, which the first count would take for its own
        meter = Callgrind(Path(folder))

    async def measure(name: str) -> float:
        if meter is None:
            return await drive(call, paths[name], args.streams, args.completions)
        return await count(meter, runtime, call, paths[name], args.streams, args.completions)

    results: dict[str, list[float]] = {name: [] for name in PATHS}
    for round_number in range(args.rounds):
        shift = round_number % len(PATHS)
        for name in PATHS[shift:] + PATHS[:shift]:
            results[name].append(await measure(name))
    for name in PATHS:
        ratios = [mine / relay for mine, relay in zip(results[name], results["relay"], strict=True)]
        if meter is not None:
            rounds = ", ".join(f"{r:,.0f}" for r in results[name])
            figure = f"instructions per completion {statistics.median(results[name]):,.0f} (rounds {rounds})"
        else:
            rounds = ", ".join(f"{r * 1000:.3f}" for r in results[name])
            figure = f"CPU per completion {statistics.median(results[name]) * 1000:.3f} ms (rounds {rounds})"
        print(f"{name:9} {figure}  / relay's: {statistics.median(ratios):.3f}", flush=True)
    if meter is not None:
        print(f"(each count less {meter.overhead:,} instructions, an empty span's: the control calls' own)")
    if args.profile:
        profile = cProfile.Profile(time.process_time)
        profile.enable()
        await drive(call, paths[args.profile], args.streams, args.completions)
        profile.disable()
        stats = pstats.Stats(profile).sort_stats(args.sort)
        if args.dump:
            stats.dump_stats(args.dump)
        stats.print_stats(args.top)
    runtime.completions.upstream.http._session, relay.session = real_sessions
    # The shutdown cancels the periodic jobs wherever they are: one cancelled inside a SQLite transaction leaves
    # the database locked, and each final flush waits busy_timeout (15 s) for it, then fails. Stopped while they
    # sleep, they leave the shutdown nothing to cancel.
    await stop_periodic_jobs(runtime)
    await shutdown()
    if scratch is not None:
        await admin(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--completions", type=int, default=160, help="Completions per path and round.")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--stand-in", type=float, default=0.002, metavar="SECONDS", help="Seconds between tokens.")
    parser.add_argument(
        "--fake-upstream",
        action="store_true",
        help="Answer every upstream request in process (one event per turn of the loop, no sockets): the paths' "
        "Python alone, repeatable.",
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="Where usage is recorded: a SQLite file in the process (the embedded default), or a scratch "
        "database on the PostgreSQL server of REGISTRY_BENCH_POSTGRES_URL (as deployed: its work is the server's).",
    )
    parser.add_argument("--profile", choices=PATHS, help="Profile this path after the rounds (cProfile).")
    parser.add_argument("--sort", default="tottime", help="cProfile's sort key.")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--dump", help="Write the profile's stats to this file (pstats).")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="Count instructions per completion under callgrind instead of CPU seconds (implies --fake-upstream).",
    )
    args = parser.parse_args()
    if args.instructions and CALLGRIND_DIR not in os.environ:
        sys.exit(under_callgrind(sys.argv[1:]))
    with fault_server() as upstream:
        asyncio.run(main_async(args, upstream))


def under_callgrind(arguments: list[str]) -> int:
    """Runs this script again under callgrind, instrumentation off until a drive turns it on; its exit status."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("--instructions needs valgrind and callgrind_control (apt-get install valgrind)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stream_cpu_callgrind_") as folder:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--quiet",
            "--instr-atstart=no",  # collection stays on: callgrind_control switches instrumentation, not collection
            f"--callgrind-out-file={folder}/callgrind.out.%p",
            sys.executable,
            str(Path(__file__).resolve()),
            *arguments,
            "--fake-upstream",
        ]
        # A key or prompt cached in memory must not expire in the middle of a count (without Redis a prompt is
        # read again after 5 s): valgrind makes a drive last seconds.
        day = "86400"
        environment = os.environ | {
            CALLGRIND_DIR: folder,
            "REGISTRY_API_KEY_CACHE_SECONDS": day,
            "REGISTRY_CACHE_TTL_SECONDS": day,
            "REGISTRY_CACHE_DEGRADED_TTL_SECONDS": day,
        }
        code = subprocess.run(command, env=environment).returncode
    print(f"{time.monotonic() - started:.0f} s in all under callgrind")
    return code


if __name__ == "__main__":
    main()
