"""README.md runs: its shell blocks, in order, against ``registry serve`` on the embedded default.

The server is started as ``make run`` starts it (``registry serve`` in an empty folder: a SQLite file there,
the in-process cache, no backend) and prints its first admin key; the blocks then run in that folder with the
``registry`` command on the PATH, ``prk_...`` standing for the printed key and ``http://127.0.0.1:8000`` for
the server's address. A block that should not run carries ``<!-- readme-test: skip (reason) -->`` on the line
before it (see ``tests/readme_blocks.py``); those are few, and listed here by reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.readme_blocks import Block, MarkerError, parse, run_blocks

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = Path(sys.executable).parent

# Why a block may stay out of the run, and how many blocks each reason covers.
SKIPPED = Counter(
    {
        "starts the server, which this test starts itself": 1,
        "serves until stopped": 1,
        "needs a local vLLM": 2,
        "needs a backend": 1,  # an evaluation run: make run configures no completion backend
    }
)


@dataclass(frozen=True)
class Server:
    url: str
    key: str
    folder: Path
    log: Path


def newcomer_environment() -> dict[str, str]:
    """This process's environment without the registry's settings, with the ``registry`` command on the PATH."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("REGISTRY_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """``registry serve`` as ``make run`` runs it, in an empty folder; its first admin key read from its output."""
    port = free_port()
    log = tmp_path / "server.log"
    folder = tmp_path / "work"
    folder.mkdir()
    env = {**newcomer_environment(), "REGISTRY_PORT": str(port), "REGISTRY_LOG_LEVEL": "WARNING"}
    with log.open("w") as output:
        process = subprocess.Popen([BIN / "registry", "serve"], cwd=folder, env=env, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        key = None
        while key is None or not _healthy(url):
            assert process.poll() is None, f"registry serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"registry serve did not start:\n{log.read_text()}"
            if key is None and (found := re.search(r"export REGISTRY_API_KEY=(prk_\S+)", log.read_text())):
                key = found[1]
            time.sleep(0.1)
        yield Server(url, key, folder, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_every_block_of_the_readme_runs_in_order(server: Server, tmp_path: Path) -> None:
    blocks = parse(README.read_text())
    scratch = tmp_path / "tmp"  # what blocks write to $TMPDIR stays with this run
    scratch.mkdir()
    failure = run_blocks(
        blocks,
        cwd=server.folder,
        env={**newcomer_environment(), "TMPDIR": str(scratch)},
        replacements={"prk_...": server.key, "http://127.0.0.1:8000": server.url},
    )
    if failure is not None:
        log = "".join(server.log.read_text().splitlines(keepends=True)[-40:])
        pytest.fail(f"{failure}--- registry serve's log, last lines ---\n{log}", pytrace=False)


def test_only_the_blocks_that_cannot_run_here_are_skipped_each_with_its_reason() -> None:
    blocks = parse(README.read_text())
    skipped = [block for block in blocks if block.skip is not None]
    summary = "\n".join(f"README.md:{block.line}: {block.skip}" for block in skipped)
    print(f"{len(skipped)} README blocks skipped:\n{summary}")
    assert Counter(block.skip for block in skipped) == SKIPPED, summary
    assert sum(block.runs for block in blocks) >= 5


def test_a_block_that_fails_is_reported_with_its_line_and_output(tmp_path: Path) -> None:
    readme = (
        "# Title\n\n"
        "```bash\nexport GREETING=hello\ncd sub\n```\n\n"
        "<!-- readme-test: file sub/name.txt -->\n```text\nAda\n```\n\n"
        '```console\n$ echo "$GREETING $(cat name.txt)" | tee out.txt\nhello Ada\n$ echo done >&2\ndone\n```\n\n'
        "<!-- readme-test: exit 3 -->\n```sh\nexit 3\n```\n\n"
        "<!-- readme-test: skip (not here) -->\n```bash\nexit 1\n```\n\n"
        "```sh\necho to stdout; echo to stderr >&2\ngrep -q nobody out.txt\necho never\n```\n"
    )
    (tmp_path / "sub").mkdir()
    failure = run_blocks(parse(readme), cwd=tmp_path, env=newcomer_environment(), replacements={})

    assert (tmp_path / "sub" / "out.txt").read_text() == "hello Ada\n"
    assert failure is not None
    assert (failure.block.line, failure.status) == (30, 1)
    assert (failure.stdout, failure.stderr) == ("to stdout\n", "to stderr\n")
    assert str(failure).startswith("README.md:30: the sh block exited with status 1\n--- block ---\necho to stdout;")


def test_a_console_block_must_print_what_the_readme_shows(tmp_path: Path) -> None:
    readme = "```console\n$ echo one; echo two\none\n$ echo three \\\n  four\nthree for\n```\n"
    failure = run_blocks(parse(readme), cwd=tmp_path, env=newcomer_environment(), replacements={})

    assert failure is not None
    assert failure.status == 0
    assert str(failure) == (
        "README.md:1: the console block printed other lines than the README shows (- README, + printed):\n"
        "@@ -1,2 +1,3 @@\n one\n-three for\n+two\n+three four\n"
    )


def test_curl_fails_on_an_error_answer_and_on_refused_items(tmp_path: Path) -> None:
    refused = tmp_path / "refused.http"
    refused.write_text("HTTP/1.1 207 Multi-Status\r\nContent-Type: application/json\r\n\r\n{}")
    missing = tmp_path / "missing.http"
    missing.write_text("HTTP/1.1 404 Not Found\r\n\r\n")
    fine = Block(line=1, language="bash", text=f"curl -s file://{tmp_path}/fine.txt\n")
    (tmp_path / "fine.txt").write_text("ok")
    env = newcomer_environment()

    assert run_blocks([fine], cwd=tmp_path, env=env, replacements={}) is None
    with answering(refused) as url:
        failure = run_blocks([Block(1, "bash", f"curl -s {url}\n")], cwd=tmp_path, env=env, replacements={})
        assert failure is not None
        assert (failure.status, failure.stdout) == (22, "{}")
    with answering(missing) as url:
        failure = run_blocks([Block(1, "bash", f"curl -s {url}\n")], cwd=tmp_path, env=env, replacements={})
        assert failure is not None
        assert failure.status == 22


def test_a_marker_needs_a_reason_and_a_block_after_it() -> None:
    with pytest.raises(MarkerError, match=r"README.md:1: .*'skip \(reason\)'"):
        parse("<!-- readme-test: skip -->\n```bash\nmake run\n```\n")
    with pytest.raises(MarkerError, match=r"README.md:1: .*'skip \(reason\)'"):
        parse("<!-- readme-test: skip () -->\n```bash\nmake run\n```\n")
    with pytest.raises(MarkerError, match=r"README\.md:1: a readme-test marker must be right before a block"):
        parse("<!-- readme-test: skip (a server) -->\n\n```bash\nmake run\n```\n")


@contextmanager
def answering(response: Path) -> Iterator[str]:
    """A one-shot HTTP server on a free port that answers ``response`` (raw bytes) to one request; its URL."""
    port = free_port()
    code = (
        "import socket, sys\n"
        "s = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
        "print('ready', flush=True)\n"
        "c, _ = s.accept(); c.recv(65536)\n"
        "c.sendall(open(sys.argv[2], 'rb').read()); c.close()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(port), str(response)], stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            process.kill()
