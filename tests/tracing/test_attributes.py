"""The pure parts of tracing: when it is on, and the attributes spans carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.lib.tracing import (
    gen_ai_request_attributes,
    gen_ai_usage_attributes,
    http_response_attributes,
    http_span_name,
    render_attributes,
    server_attributes,
    tracing_choice,
    upstream_span_name,
)

CASES: list[list[Any]] = json.loads((Path(__file__).parent / "cases" / "tracing_choice.json").read_text())


@pytest.mark.parametrize(("environ", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tracing_choice(environ: dict[str, str], expected: dict[str, Any]) -> None:
    if "error" in expected:
        with pytest.raises(ValueError, match=expected["error"]):
            tracing_choice(environ)
        return
    choice = tracing_choice(environ)
    assert (choice.enabled, list(choice.exporters)) == (expected["enabled"], expected["exporters"])


def test_gen_ai_request_attributes_name_the_operation_model_and_numeric_parameters() -> None:
    payload = {"model": "tiny", "max_tokens": 8, "temperature": 0.2, "seed": 7, "stream": True, "stop": "\n"}

    assert gen_ai_request_attributes("/v1/chat/completions", payload) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "vllm",
        "gen_ai.system": "vllm",
        "gen_ai.request.model": "tiny",
        "gen_ai.request.max_tokens": 8,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.seed": 7,
        "gen_ai.request.stop_sequences": ["\n"],
    }
    assert gen_ai_request_attributes("/v1/completions", {"model": "tiny"})["gen_ai.operation.name"] == "text_completion"


def test_usage_attributes_list_the_finish_reason_only_when_known() -> None:
    assert gen_ai_usage_attributes(7, 3, "stop")["gen_ai.response.finish_reasons"] == ["stop"]
    assert "gen_ai.response.finish_reasons" not in gen_ai_usage_attributes(7, 0, None)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://vllm:8000", {"server.address": "vllm", "server.port": 8000}),
        ("https://gpu.example", {"server.address": "gpu.example", "server.port": 443}),
        ("http://[::1]", {"server.address": "::1", "server.port": 80}),
    ],
    ids=["explicit port", "https default port", "ipv6 http default port"],
)
def test_server_attributes(url: str, expected: dict[str, Any]) -> None:
    assert server_attributes(url) == expected


def test_span_names_follow_the_conventions() -> None:
    assert http_span_name("POST", "/v1/prompts/{name}/render") == "POST /v1/prompts/{name}/render"
    assert http_span_name("GET", None) == "GET"
    assert upstream_span_name("/v1/chat/completions", "tiny") == "chat tiny"


def test_only_server_errors_get_an_error_type() -> None:
    assert "error.type" not in http_response_attributes("/v1/prompts", 404, "r1")
    assert http_response_attributes(None, 503, None) == {"http.response.status_code": 503, "error.type": "503"}


def test_render_attributes_carry_the_experiment_only_when_routed_through_one() -> None:
    assert render_attributes(prompt="greet", version=2) == {"registry.prompt": "greet", "registry.prompt.version": 2}
    assert render_attributes(
        prompt="greet", version=2, experiment="tone", phase=1, variant="b", in_experiment=True
    ) == {
        "registry.prompt": "greet",
        "registry.prompt.version": 2,
        "registry.experiment": "tone",
        "registry.experiment.phase": 1,
        "registry.experiment.in_experiment": True,
        "registry.variant": "b",
    }
