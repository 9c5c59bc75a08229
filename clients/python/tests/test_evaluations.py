"""The evaluation calls: datasets, runs and their event stream, gates, and promotion past a gate.

A recording ``httpx.MockTransport`` answers, so these check the client's side of the contract;
the CLI tests run the same calls against a live registry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prompt_registry_client import CachePolicy, NotFound, RegistryClient, ValidationFailed

PROGRESS = {"id": 7, "status": "running", "total_items": 2, "items_done": 1, "items_passed": 1, "pass_rate": 1.0}
EVENTS = (
    b": comment\n\n"
    b"event: progress\ndata: " + json.dumps(PROGRESS).encode() + b"\n\n"
    b"event: done\ndata: " + json.dumps({**PROGRESS, "status": "completed", "items_done": 2}).encode() + b"\n\n"
    b"event: progress\ndata: {}\n\n"  # nothing after done is read
)


class Service:
    """Answers as the evaluations API does, recording each request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.datasets: set[str] = {"cases"}

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path.endswith("/events"):
            return httpx.Response(200, content=EVENTS, headers={"content-type": "text/event-stream"})
        if path.endswith("/export"):
            return httpx.Response(200, content=b'{"variables":{"a":1}}\n', headers={"content-type": "x"})
        if path == "/v1/evals/datasets" and request.method == "POST":
            self.datasets.add(json.loads(request.content)["name"])
            return httpx.Response(201, json={"name": "new"})
        if path.endswith("/versions") and request.method == "POST":
            name = path.split("/")[4]
            if name not in self.datasets:
                return httpx.Response(404, json={"type": "/problems/dataset_not_found", "detail": "no dataset"})
            return httpx.Response(201 if name == "new" else 200, json={"dataset": name, "version": 1})
        if path.endswith("/promote"):
            return httpx.Response(
                422,
                json={
                    "type": "/problems/gate_failed",
                    "detail": "may not enter production: no run",
                    "failures": ["no run"],
                    "evidence": {"dataset": "cases@1"},
                },
            )
        if (request.method == "GET" and path in ("/v1/evals/datasets", "/v1/evals/runs")) or path.endswith("/items"):
            more = request.url.params.get("cursor") is None
            return httpx.Response(200, json={"items": [{"n": 1 if more else 2}], "next_cursor": "c" if more else None})
        return httpx.Response(200, json={"ok": True})

    def sent(self, index: int = -1) -> tuple[str, str, Any]:
        request = self.requests[index]
        content = request.content
        body = json.loads(content) if content and request.headers.get("content-type") == "application/json" else content
        return request.method, str(request.url).removeprefix("http://registry"), body or None


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def client(service: Service) -> Iterator[RegistryClient]:
    transport = httpx.MockTransport(service.handle)
    with RegistryClient("http://registry", "prk_key", transport=transport, cache=CachePolicy(watch_changes=False)) as c:
        yield c


def test_datasets_are_listed_shown_and_their_versions_read(client: RegistryClient, service: Service) -> None:
    assert list(client.list_datasets(prefix="support/")) == [{"n": 1}, {"n": 2}]
    assert service.sent(-2) == ("GET", "/v1/evals/datasets?prefix=support%2F&limit=200", None)
    client.get_dataset("support/cases")
    assert service.sent() == ("GET", "/v1/evals/datasets/support%2Fcases", None)
    client.get_dataset_version("cases")
    assert service.sent() == ("GET", "/v1/evals/datasets/cases/versions/latest", None)
    client.get_dataset_version("cases", 3)
    assert service.sent() == ("GET", "/v1/evals/datasets/cases/versions/3", None)


def test_a_push_sends_the_file_as_is_and_says_whether_a_version_was_made(
    client: RegistryClient, service: Service
) -> None:
    version, created = client.push_dataset("cases", b"a,b\n1,2\n", format="csv", commit_message="more")
    assert (version, created) == ({"dataset": "cases", "version": 1}, False)
    request = service.requests[-1]
    assert request.headers["content-type"] == "text/csv"
    assert service.sent() == ("POST", "/v1/evals/datasets/cases/versions?commit_message=more", b"a,b\n1,2\n")


def test_a_push_creates_a_missing_dataset_unless_told_not_to(client: RegistryClient, service: Service) -> None:
    with pytest.raises(NotFound):
        client.push_dataset("new", b"{}\n", create=False)
    _, created = client.push_dataset("new", b"{}\n")
    assert created
    assert [f"{r.method} {r.url.path}" for r in service.requests[-3:]] == [
        "POST /v1/evals/datasets/new/versions",
        "POST /v1/evals/datasets",
        "POST /v1/evals/datasets/new/versions",
    ]
    assert service.requests[-1].headers["content-type"] == "application/x-ndjson"


def test_an_export_streams_the_latest_version_or_the_one_asked(client: RegistryClient, service: Service) -> None:
    with client.export_dataset("cases") as chunks:
        assert b"".join(chunks) == b'{"variables":{"a":1}}\n'
    assert service.sent() == ("GET", "/v1/evals/datasets/cases/versions/latest/export?format=jsonl", None)
    with client.export_dataset("cases", 2, format="csv") as chunks:
        b"".join(chunks)
    assert service.sent() == ("GET", "/v1/evals/datasets/cases/versions/2/export?format=csv", None)


def test_a_run_is_started_with_the_api_body(client: RegistryClient, service: Service) -> None:
    client.start_eval_run(
        "greet", 2, "cases", [{"kind": "exact_match"}], dataset_version=1, pass_rule={"min_score": 1}, concurrency=8
    )
    body = {
        "prompt": "greet",
        "version": 2,
        "dataset": {"name": "cases", "version": 1},
        "scorers": [{"kind": "exact_match"}],
        "config_version": None,
        "pass_rule": {"min_score": 1},
        "concurrency": 8,
    }
    assert service.sent() == ("POST", "/v1/evals/runs", body)


def test_a_run_with_any_config_sends_it_as_a_reference(client: RegistryClient, service: Service) -> None:
    client.start_eval_run("greet", 2, "cases", [{"kind": "exact_match"}], config={"name": "fast", "label": "staging"})
    body = {
        "prompt": "greet",
        "version": 2,
        "dataset": {"name": "cases", "version": None},
        "scorers": [{"kind": "exact_match"}],
        "config_version": None,
        "pass_rule": None,
        "config": {"name": "fast", "label": "staging"},
    }
    assert service.sent() == ("POST", "/v1/evals/runs", body)


def test_a_run_is_read_its_items_paged_cancelled_and_compared(client: RegistryClient, service: Service) -> None:
    client.get_eval_run(7)
    assert service.sent() == ("GET", "/v1/evals/runs/7", None)
    assert list(client.eval_run_items(7, failed=True)) == [{"n": 1}, {"n": 2}]
    assert service.sent() == ("GET", "/v1/evals/runs/7/items?failed=true&limit=200&cursor=c", None)
    list(client.eval_run_items(7))
    assert service.sent() == ("GET", "/v1/evals/runs/7/items?limit=200&cursor=c", None)
    client.cancel_eval_run(7)
    assert service.sent() == ("POST", "/v1/evals/runs/7/cancel", None)
    client.compare_eval_runs(7, 8)
    assert service.sent() == ("GET", "/v1/evals/compare?base=7&candidate=8", None)


def test_the_event_stream_yields_progress_then_done_and_ends_there(client: RegistryClient, service: Service) -> None:
    events = list(client.eval_run_events(7))
    assert [(name, data["items_done"]) for name, data in events] == [("progress", 1), ("done", 2)]
    assert service.requests[-1].extensions["timeout"]["read"] is None, "the stream waits for the next change"


def test_gates_are_set_read_and_removed(client: RegistryClient, service: Service) -> None:
    client.set_gate("support/greet", "production", dataset="cases", min_pass_rate=0.9, no_regression=True)
    body = {"dataset": {"name": "cases", "version": None}, "min_pass_rate": 0.9, "no_regression": True, "alpha": 0.05}
    assert service.sent() == ("PUT", "/v1/prompts/support%2Fgreet/gates/production", body)
    client.get_gate("greet", "staging")
    assert service.sent() == ("GET", "/v1/prompts/greet/gates/staging", None)
    client.delete_gate("greet", "staging")
    assert service.sent() == ("DELETE", "/v1/prompts/greet/gates/staging", None)


def test_a_refused_promotion_carries_the_evidence_and_an_override_sends_its_reason(
    client: RegistryClient, service: Service
) -> None:
    with pytest.raises(ValidationFailed) as refused:
        client.promote("greet", 2, "production", expected_current=1, override_gate="hotfix, evaluated by hand")
    assert refused.value.type == "gate_failed"
    assert refused.value.body["failures"] == ["no run"]
    assert refused.value.body["evidence"] == {"dataset": "cases@1"}
    body = {"to": "production", "reason": None, "expected_current": 1, "override_gate": "hotfix, evaluated by hand"}
    assert service.sent() == ("POST", "/v1/prompts/greet/versions/2/promote", body)
    with pytest.raises(ValidationFailed):
        client.promote("greet", 2, "production", expected_current=1)
    assert "override_gate" not in service.sent()[2]
