"""Retries, typed errors, fallbacks and batching, with the transport as the test seam (no service needed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prompt_registry_client import (
    BatchPolicy,
    CachePolicy,
    PromptNotFound,
    RateLimited,
    RegistryClient,
    RetryPolicy,
    ServiceUnavailable,
    Unauthorized,
    VariablesInvalid,
)
from prompt_registry_client._cache import Freshness
from prompt_registry_client._config import parse_retry_after
from prompt_registry_client._core import CacheKey, Need, Sleep
from prompt_registry_client._sse import ServerSentEvent

Handler = Callable[[httpx.Request], httpx.Response]
QUICK = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.5)
NO_FEED = CachePolicy(watch_changes=False)


def resolved(version: int = 1, template: str = "Hello {{ name }}!", name: str = "greet") -> dict[str, Any]:
    """A resolve answer (``GET /v1/prompts/{name}``)."""
    return {
        "name": name,
        "description": "",
        "tags": [],
        "labels": {"production": version, "staging": None, "latest": version},
        "version": {
            "prompt": name,
            "version": version,
            "state": "production",
            "kind": "text",
            "template": template,
            "messages": None,
            "input_schema": None,
            "variables": ["name"],
            "config": None,
            "commit_message": "",
            "author": "test",
            "sha256": "0" * 64,
            "created_at": "2026-01-01T00:00:00Z",
        },
    }


def problem(status: int, kind: str, *, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    body = {"type": f"/problems/{kind}", "title": kind, "status": status, "detail": kind.replace("_", " "), **extra}
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json", **(headers or {})})


class Script:
    """Answers requests in order; records what was asked."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer


def client(script: Script, **options: Any) -> RegistryClient:
    options.setdefault("retries", QUICK)
    options.setdefault("cache", NO_FEED)
    return RegistryClient("http://registry.test", "prk_test", transport=httpx.MockTransport(script), **options)


def recording_sleeps(registry: RegistryClient, happened: list[str | float]) -> Callable[[Need], Any]:
    """The client's way of doing what its flows ask, except that a sleep is recorded instead of waited."""
    satisfy = registry._satisfy

    def record(need: Need) -> Any:
        if isinstance(need, Sleep):
            happened.append(need.seconds)
            return None
        return satisfy(need)

    return record


# --------------------------------------------------------------------------- retries


def test_a_connection_error_is_retried() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.Response(200, json=resolved()))
    with client(script) as registry:
        assert registry.get_prompt("greet").version == 1
    assert len(script.requests) == 2


def test_503_is_retried_after_the_delay_the_service_asks_for(monkeypatch: pytest.MonkeyPatch) -> None:
    happened: list[str | float] = []
    script = Script(httpx.Response(503, headers={"Retry-After": "0.05"}), httpx.Response(200, json=resolved()))

    def send(request: httpx.Request) -> httpx.Response:
        happened.append(request.method)
        return script(request)

    with client(Script(send)) as registry:
        monkeypatch.setattr(registry, "_satisfy", recording_sleeps(registry, happened))
        registry.get_prompt("greet")
    assert happened == ["GET", 0.05, "GET"]


def test_a_retry_after_beyond_the_policy_raises_at_once_with_the_delay() -> None:
    script = Script(problem(429, "over_budget", headers={"Retry-After": "3600"}))
    with client(script) as registry, pytest.raises(RateLimited) as caught:
        registry.get_prompt("greet")
    assert len(script.requests) == 1
    assert caught.value.retry_after == 3600
    assert caught.value.type == "over_budget"


def test_retries_stop_after_the_policy_s_attempts_with_a_typed_error() -> None:
    script = Script(httpx.Response(502))
    with client(script) as registry, pytest.raises(ServiceUnavailable):
        registry.get_prompt("greet")
    assert len(script.requests) == QUICK.attempts


def test_a_completion_whose_answer_was_lost_is_not_sent_again() -> None:
    script = Script(httpx.ReadError("connection reset"))
    with client(script) as registry, pytest.raises(ServiceUnavailable):
        registry.complete("greet", {"name": "Ada"})
    assert len(script.requests) == 1, "it may have run: sending it again could pay twice"


def test_a_completion_that_never_left_is_retried() -> None:
    done = {
        "prompt": "greet",
        "version": 1,
        "config": {"name": "c", "version": 1, "backend": "local", "model": "m"},
        "experiment": None,
        "fallback_used": False,
        "cached": False,
        "text": "Hi",
        "finish_reason": "stop",
        "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
        "cost": 0.0,
        "latency_ms": 5.0,
        "ttft_ms": 1.0,
    }
    script = Script(httpx.ConnectError("refused"), httpx.Response(200, json=done))
    with client(script) as registry:
        completion = registry.complete("greet", {"name": "Ada"}, max_tokens=5)
    assert completion.text == "Hi"
    assert json.loads(script.requests[-1].content) == {"variables": {"name": "Ada"}, "stream": False, "max_tokens": 5}


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    policy = RetryPolicy(attempts=10, backoff=0.1, max_backoff=1.0)
    assert [policy.delay(n, rand=lambda: 0.0) for n in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]
    assert [policy.delay(n, rand=lambda: 1.0) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.delay(9) is None, "the tenth try was the last"
    assert policy.delay(0, retry_after=0.7) == 0.7
    assert policy.delay(0, retry_after=1.5) is None


def test_retry_after_is_read_as_seconds_or_as_a_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(later, now=now.timestamp()) == 30.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# --------------------------------------------------------------------------- typed errors


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (problem(401, "unauthorized"), Unauthorized),
        (problem(404, "prompt_not_found"), PromptNotFound),
        (problem(404, "label_not_set"), PromptNotFound),
        (
            problem(422, "variables_invalid", errors=[{"field": "variables.name", "message": "is required"}]),
            VariablesInvalid,
        ),
    ],
    ids=["401", "unknown prompt", "label not set", "invalid variables"],
)
def test_error_answers_raise_typed_errors(answer: httpx.Response, error: type[Exception]) -> None:
    with client(Script(answer)) as registry, pytest.raises(error):
        registry.request("POST", "/v1/prompts/greet/render", json={"variables": {}})


def test_a_local_render_reports_every_variable_problem() -> None:
    with client(Script(httpx.Response(200, json=resolved()))) as registry, pytest.raises(VariablesInvalid) as caught:
        registry.render("greet", {"nme": "typo"})
    assert caught.value.errors == [
        {"field": "variables.name", "message": "is required"},
        {"field": "variables.nme", "message": "is not an input of this prompt"},
    ]


# --------------------------------------------------------------------------- never the reason an app fails


def test_without_the_service_the_fallback_serves_and_without_one_a_typed_error() -> None:
    script = Script(httpx.ConnectError("refused"))
    with client(script, fallbacks={"greet": "Hello, {{ name }}."}) as registry:
        rendered = registry.render("greet", {"name": "Ada", "unused": 1})
        chat = registry.render("other", {"name": "Ada"}, fallback=[{"role": "system", "content": "Be {{ name }}"}])
        with pytest.raises(ServiceUnavailable):
            registry.get_prompt("unknown")
    assert (rendered.text, rendered.fallback, rendered.version) == ("Hello, Ada.", True, None)
    assert chat.to_messages() == [{"role": "system", "content": "Be Ada"}]


def test_once_the_service_is_found_unreachable_fallbacks_serve_at_once_for_a_while() -> None:
    """Counts the tries the caller's own thread makes (background probes run on other threads)."""
    caller = threading.get_ident()
    tries_by_caller: list[str] = []

    def unreachable(request: httpx.Request) -> httpx.Response:
        if threading.get_ident() == caller:
            tries_by_caller.append(request.url.path)
        raise httpx.ConnectTimeout("no answer", request=request)

    now = [1000.0]
    with client(Script(unreachable), fallbacks={"greet": "Hi", "other": "Hey"}) as registry:
        registry._core.clock = lambda: now[0]
        registry.get_prompt("greet")
        first = len(tries_by_caller)
        now[0] += QUICK.cooldown - 0.1
        served = [registry.get_prompt(name) for name in ("greet", "other", "greet")]
        meanwhile = len(tries_by_caller) - first
        now[0] += 0.2  # the cooldown is over: the next call asks the service again
        registry.get_prompt("other")
        after = len(tries_by_caller) - first - meanwhile
    assert first == QUICK.attempts, "the first call waited for every try"
    assert meanwhile == 0, "the next ones did not wait"
    assert [p.template for p in served] == ["Hi", "Hey", "Hi"]
    assert after == QUICK.attempts


def test_an_unknown_prompt_is_an_error_even_with_a_fallback() -> None:
    with client(Script(problem(404, "prompt_not_found"))) as registry, pytest.raises(PromptNotFound):
        registry.get_prompt("typo", fallback="Hi")


def test_a_change_or_a_reset_makes_copies_unverified_and_asks_for_their_refresh() -> None:
    script = Script(lambda request: httpx.Response(200, json=resolved(name=request.url.path.rsplit("/", 1)[1])))
    with client(script) as registry:
        registry.get_prompt("greet")
        registry.get_prompt("greet", version=1)
        registry.get_prompt("other")
        core = registry._core
        change = ServerSentEvent("change", json.dumps({"kind": "prompt", "name": "greet", "action": "promote"}))
        refreshes = core.on_change(change)
        assert sorted(str(s.key) for s in refreshes) == sorted(
            str(("prompt", key)) for key in [CacheKey("greet", "production", None), CacheKey("greet", None, 1)]
        )
        assert core.prompts.lookup(CacheKey("other", "production", None))[0] is Freshness.FRESH
        assert core.prompts.lookup(CacheKey("greet", None, 1))[0] is Freshness.UNVERIFIED
        assert len(core.on_change(ServerSentEvent("reset", "{}"))) == 3
        assert core.prompts.lookup(CacheKey("other", "production", None))[0] is Freshness.UNVERIFIED
        for spawn in refreshes:
            spawn.flow.close()


# --------------------------------------------------------------------------- batches


def test_exposures_refused_as_invalid_are_dropped_and_the_others_sent_again() -> None:
    refused = problem(422, "invalid_input", errors=[{"field": "exposures[1].experiment", "message": "is not running"}])
    script = Script(refused, httpx.Response(200, json={"recorded": 2}))
    with client(script) as registry:
        outbox = registry._core.outbox
        for unit in ("a", "b", "c"):
            outbox.add_exposure("exp" if unit != "b" else "stopped", 1, unit, "v0")
        assert registry.flush()
    assert [json.loads(r.content)["exposures"] for r in script.requests][1] == [
        {"experiment": "exp", "unit": "a", "variant": "v0"},
        {"experiment": "exp", "unit": "c", "variant": "v0"},
    ]
    assert registry.dropped_events == 1


def test_an_exposure_to_an_experiment_not_yet_running_there_is_sent_again_later() -> None:
    not_yet = [{"field": "exposures[0].experiment", "message": "is not a running experiment"}]
    script = Script(problem(422, "invalid_input", errors=not_yet), httpx.Response(200, json={"recorded": 1}))
    with client(script) as registry:
        registry._core.outbox.add_exposure("just-started", 1, "u1", "v0")
        assert not registry.flush(), "it waits: the replica may learn of the experiment in a moment"
        assert registry.pending_events == 1
        assert registry.flush()
    assert [json.loads(r.content) for r in script.requests] == 2 * [
        {"exposures": [{"experiment": "just-started", "unit": "u1", "variant": "v0"}]}
    ]
    assert registry.dropped_events == 0


def test_events_the_service_rejects_are_counted_not_retried() -> None:
    answer = {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 1,
        "items": [{"index": 0, "status": "accepted"}, {"index": 1, "status": "rejected", "errors": []}],
    }
    script = Script(httpx.Response(207, json=answer))
    with client(script, batches=BatchPolicy(flush_interval=60)) as registry:
        registry.track("u", "clicks")
        registry.track("u", "no-such-metric")
    assert len(script.requests) == 1
    assert registry.dropped_events == 1


def test_events_wait_while_the_service_is_away_and_leave_when_it_is_back() -> None:
    script = Script(httpx.ConnectError("refused"))
    with client(script, batches=BatchPolicy(flush_interval=60)) as registry:
        key = registry.track("u", "clicks", 2.0, timestamp=datetime(2026, 1, 1, tzinfo=UTC), idempotency_key="k-1")
        assert not registry.flush()
        assert registry.pending_events == 1
        script.answers = [httpx.Response(200, json={"accepted": 1, "duplicates": 0, "rejected": 0, "items": []})]
        assert registry.flush()
    sent = json.loads(script.requests[-1].content)["events"]
    assert key == "k-1"
    assert sent == [
        {
            "unit": "u",
            "metric": "clicks",
            "value": 2.0,
            "idempotency_key": "k-1",
            "timestamp": "2026-01-01T00:00:00+00:00",
        }
    ]


def test_a_full_queue_drops_new_events_instead_of_blocking_the_app() -> None:
    script = Script(httpx.ConnectError("refused"))
    with client(script, retries=RetryPolicy(attempts=1), batches=BatchPolicy(max_pending=5, close_timeout=0.1)) as r:
        for _ in range(8):
            r.track("u", "clicks")
        assert r.pending_events == 5
        assert r.dropped_events == 3
