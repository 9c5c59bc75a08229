"""The pure rules of completions, from JSON case files: ``[description, *inputs, expected]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.completions.payload import (
    Overrides,
    build_payload,
    cache_key,
    context_problem,
    is_deterministic,
    override_problems,
    token_upper_bound,
    upstream_path,
)
from registry.completions.policy import (
    BreakerState,
    BreakerStatus,
    backoff_delay,
    breaker_admit,
    breaker_record,
    breaker_release,
    classify_status,
)
from registry.completions.pricing import budget_problem, completion_cost
from registry.completions.redaction import redact
from registry.completions.sse import ChunkReader, MalformedStreamError, decode_events

CASES = Path(__file__).parent / "cases"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        name = metafunc.function.__name__.removeprefix("test_").split("_from_cases")[0]
        cases = json.loads((CASES / f"{name}.json").read_text())
        metafunc.parametrize("case", [c[1:] for c in cases], ids=[c[0] for c in cases])


def test_backoff_from_cases(case: list[Any]) -> None:
    retry, base, cap, jitter, retry_after, expected = case
    assert backoff_delay(retry, base=base, cap=cap, jitter=jitter, retry_after=retry_after) == pytest.approx(expected)


def test_classify_status_from_cases(case: list[Any]) -> None:
    status, body, expected = case
    assert classify_status(status, body) == expected


def test_breaker_from_cases(case: list[Any]) -> None:
    _, events, expected_status, expected_admissions = case
    state, admissions = BreakerState(), []
    for event, now in events:
        if event == "admit":
            state, admitted = breaker_admit(state, now=now, cooldown=10)
            admissions.append(admitted)
        elif event == "release":
            state = breaker_release(state)
        else:
            state = breaker_record(state, failed=event == "fail", now=now, threshold=3)
    assert state.status == BreakerStatus(expected_status)
    assert admissions == expected_admissions


def test_sse_from_cases(case: list[Any]) -> None:
    lines, expected = case
    if expected == "malformed":
        with pytest.raises(MalformedStreamError):
            decode_events(lines)
    else:
        assert [[e.event, e.data.decode()] for e in decode_events(lines)] == expected


def test_chunks_from_cases(case: list[Any]) -> None:
    """Each chunk read whole (one read, one event) and through the event reader (CRLF line ends), as the same."""
    data, expected = case
    for read in (f"data: {data}\n\n", f"data: {data}\r\n\r\n"):
        reader = ChunkReader()
        if expected == "malformed" or "error" in expected:
            message = (
                "not an OpenAI-compatible chunk" if expected == "malformed" else f"error in stream: {expected['error']}"
            )
            with pytest.raises(MalformedStreamError, match=message):
                reader.read(read.encode())
            continue
        assert reader.read(read.encode()) == expected.get("text", "")
        assert reader.finish_reason == expected.get("finish_reason")
        assert (reader.input_tokens, reader.output_tokens) == (
            expected.get("input_tokens", 0),
            expected.get("output_tokens", 1 if expected.get("text") else 0),  # a delta counts until usage comes
        )


def test_redaction_from_cases(case: list[Any]) -> None:
    text, expected = case
    assert redact(text) == expected


def test_cost_from_cases(case: list[Any]) -> None:
    input_tokens, output_tokens, input_price, output_price, expected = case
    cost = completion_cost(
        input_tokens, output_tokens, input_price_per_mtok=input_price, output_price_per_mtok=output_price
    )
    assert cost == pytest.approx(expected)


def test_context_from_cases(case: list[Any]) -> None:
    prompt_tokens, max_tokens, limit, expected = case
    assert context_problem(prompt_tokens, max_tokens, limit) == expected


def test_payload_takes_config_params_and_allowed_overrides() -> None:
    payload = build_payload(
        model="m",
        text=None,
        messages=[{"role": "user", "content": "hi"}],
        params={"temperature": 0.2, "max_tokens": 100, "extra": {"min_p": 0.1}},
        overrides=Overrides(max_tokens=10, seed=7, user="u-1"),
    )
    assert payload == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "max_tokens": 10,
        "min_p": 0.1,
        "seed": 7,
        "user": "u-1",
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    assert upstream_path(payload) == "/v1/chat/completions"


def test_text_prompt_goes_to_completions() -> None:
    payload = build_payload(model="m", text="Once", messages=None, params={}, overrides=Overrides())
    assert upstream_path(payload) == "/v1/completions"
    assert payload["prompt"] == "Once"


def test_max_tokens_override_may_only_lower_the_config() -> None:
    assert override_problems({"max_tokens": 50}, Overrides(max_tokens=20)) == []
    assert override_problems({}, Overrides(max_tokens=5000)) == []
    [problem] = override_problems({"max_tokens": 50}, Overrides(max_tokens=51))
    assert problem.field == "max_tokens"


def test_token_bound_is_never_below_the_utf8_length() -> None:
    text_payload = {"prompt": "héllo"}
    chat_payload = {"messages": [{"role": "user", "content": "héllo"}, {"role": "system", "content": "x"}]}
    assert token_upper_bound(text_payload) >= len("héllo".encode())
    assert token_upper_bound(chat_payload) >= len("héllo".encode()) + 1 + 2 * 4


def test_only_greedy_or_seeded_requests_are_deterministic() -> None:
    assert is_deterministic({"temperature": 0})
    assert is_deterministic({"temperature": 1.0, "seed": 3})
    assert not is_deterministic({"temperature": 0.7})
    assert not is_deterministic({})


def test_cache_key_ignores_the_end_user_but_not_the_prompt() -> None:
    base = {"model": "m", "prompt": "a", "temperature": 0}
    key = cache_key(prompt="p", version=1, config="c", config_version=1, payload={**base, "user": "x"})
    assert key == cache_key(prompt="p", version=1, config="c", config_version=1, payload={**base, "user": "y"})
    assert key != cache_key(prompt="p", version=1, config="c", config_version=1, payload={**base, "prompt": "b"})
    assert key != cache_key(prompt="p", version=2, config="c", config_version=1, payload=base)


def test_budget_problem_names_the_limit_reached() -> None:
    assert budget_problem(used_tokens=99, used_cost=0, token_budget=100, cost_budget=None) is None
    assert "100 tokens" in (budget_problem(used_tokens=100, used_cost=0, token_budget=100, cost_budget=None) or "")
    assert "cost budget" in (budget_problem(used_tokens=0, used_cost=2.0, token_budget=None, cost_budget=1.5) or "")
