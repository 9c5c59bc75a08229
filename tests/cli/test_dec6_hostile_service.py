"""``registry`` against something at REGISTRY_URL that is not the registry: a sign-in page, a proxy's
error page, or a service that names prompts and datasets whose files would lie outside the folder."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.cli import main

Answer = Callable[[str], tuple[int, str, bytes]]  # path -> status, content type, body
TRUNCATED = "application/x-ndjson; truncated"  # a content type that announces more bytes than are sent


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, media, body = answer(self.path)
                self.send_response(status)
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(len(body) * (2 if media == TRUNCATED else 1)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _run(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={"REGISTRY_URL": url, "REGISTRY_API_KEY": "k"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def test_an_html_page_is_a_clear_error_with_the_unavailable_code_not_a_traceback(
    serve: Callable[[Answer], str], tmp_path: Path
) -> None:
    page = b"<html><body><h1>Sign in</h1>" + b"x" * 2000 + b"</body></html>"
    signin = serve(lambda path: (200, "text/html", page))
    proxy = serve(lambda path: (502, "text/html", page))
    for args in (["prompts", "list"], ["datasets", "list"], ["experiments", "list"]):
        code, out, err = _run(signin, *args)
        assert (code, out) == (7, ""), args
        assert "answered something that is not JSON" in err
        assert signin in err
    code, out, err = _run(proxy, "prompts", "show", "a")
    assert (code, out) == (7, "")
    assert err.startswith("error: HTTP 502, answered with an HTML page")
    assert "Sign in" not in err
    (tmp_path / "greet.yaml").write_text("template: Hello\n")
    code, out, err = _run(proxy, "sync", "--dry-run", str(tmp_path))
    assert (code, out) == (1, "")
    assert err == "error: greet: HTTP 502, answered with an HTML page (a proxy's?), not the registry's problem+json\n"


def test_export_writes_no_file_outside_its_folder_whatever_names_the_service_gives(
    serve: Callable[[Answer], str], tmp_path: Path
) -> None:
    folder, outside = tmp_path / "prompts", tmp_path / "outside"
    (folder / "datasets").mkdir(parents=True)
    outside.mkdir()
    os.symlink(outside, folder / "linked")
    os.symlink(outside, folder / "datasets" / "linked")
    prompts = ["../escape", "a/../../b", "/abs/olute", "linked/x"]
    datasets = ["../../ds", "linked/ds"]

    def answer(path: str) -> tuple[int, str, bytes]:
        if path.startswith("/v1/prompts?"):
            items = [{"name": name, "latest_version": 1} for name in prompts]
        elif path.startswith("/v1/evals/datasets?"):
            items = [{"name": name, "latest_version": 1} for name in datasets]
        else:  # nothing else may be asked for: a refused name is not resolved
            return 500, "application/problem+json", json.dumps({"detail": f"asked for {path}"}).encode()
        return 200, "application/json", json.dumps({"items": items, "next_cursor": None}).encode()

    code, out, err = _run(serve(answer), "export", str(folder))
    assert code == 1
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == [
        "outside",
        "prompts",
        "prompts/datasets",
        "prompts/datasets/linked",
        "prompts/linked",
    ]
    for name in prompts + datasets:
        assert f"{name!r}: not exported" in err
    assert "0 file(s) written" in out


def test_a_pull_whose_stream_breaks_leaves_neither_the_file_nor_a_partial_one(
    serve: Callable[[Answer], str], tmp_path: Path
) -> None:
    url = serve(lambda path: (200, TRUNCATED, b'{"variables": {"q": "a"}}\n' * 100))
    target = tmp_path / "cases.jsonl"
    code, _out, err = _run(url, "datasets", "pull", "cases", "--output", str(target))
    assert code == 7
    assert err.startswith(f"error: the answer from {url}/v1/evals/datasets/cases/versions/latest/export")
    assert "broke off" in err
    code, _out, err = _run(url, "experiments", "export", "test", "--output", str(tmp_path / "units.csv"))
    assert code == 7
    assert err.startswith(f"error: the answer from {url}/v1/experiments/test/export")
    assert "broke off" in err
    assert list(tmp_path.iterdir()) == []
    whole = serve(lambda path: (200, "application/x-ndjson", b'{"variables": {"q": "a"}}\n'))
    code, _out, err = _run(whole, "datasets", "pull", "cases", "--output", str(tmp_path / "no" / "cases.jsonl"))
    assert code == 1
    assert err == f"error: cannot read or write {tmp_path / 'no' / 'cases.jsonl.partial'}: No such file or directory\n"
