"""Spans of real requests, read from the SDK's in-memory exporter; the backend is the fault server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from registry.lib.tracing import RENDER_SPAN, Tracing
from registry.prompts.catalog import Routing
from registry.prompts.fast_path import PromptFastPath
from registry.prompts.schemas import ExperimentOut
from tests.completions.conftest import publish, unique
from tests.completions.fault_server import CHAT, PROMPT_TOKENS, FaultServer
from tests.tracing.conftest import TracedRegistry
from tests.waiting import eventually_async

COMPLETE = "/v1/prompts/greet/complete"
RENDER = "/v1/prompts/greet/render"
REQUEST = {"variables": {"name": "Ada"}}
CALLER_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


def parse_traceparent(value: str) -> tuple[int, int]:
    version, trace_id, span_id, _flags = value.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


async def server_span(exporter: InMemorySpanExporter, path: str) -> ReadableSpan:
    """The request's server span, once it has ended (it ends just after the response is sent)."""

    async def ended() -> bool:
        return any(_is_server_span(span, path) for span in exporter.get_finished_spans())

    await eventually_async(ended, f"the server span of {path}")
    return next(span for span in exporter.get_finished_spans() if _is_server_span(span, path))


def _is_server_span(span: ReadableSpan, path: str) -> bool:
    return span.kind == SpanKind.SERVER and (span.attributes or {}).get("url.path") == path


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def published_client(
    traced_registry: TracedRegistry, tracing: Tracing, admin: dict[str, str]
) -> tuple[httpx.AsyncClient, str]:
    client = await traced_registry(tracing)
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, max_context_tokens=4096)
    return client, model


async def test_a_completion_has_a_request_span_with_gen_ai_attributes_and_render_and_upstream_children(
    traced_registry: TracedRegistry, exporter: InMemorySpanExporter, admin: dict[str, str], fault: FaultServer
) -> None:
    client, model = await published_client(traced_registry, Tracing.exporting_to(exporter), admin)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 200, response.text
    request = await server_span(exporter, COMPLETE)
    assert request.name == "POST /v1/prompts/{name}/complete"
    attributes = dict(request.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"] == "vllm"
    assert attributes["gen_ai.request.model"] == model
    assert attributes["gen_ai.request.max_tokens"] == 8
    assert attributes["gen_ai.usage.input_tokens"] == PROMPT_TOKENS
    assert attributes["gen_ai.usage.output_tokens"] == 3
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["registry.prompt"] == "greet"
    assert attributes["registry.prompt.version"] == 1
    assert attributes["registry.config"] == "cfg"
    assert attributes["registry.config.version"] == 1
    assert attributes["registry.completion.status"] == "ok"
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.route"] == "/v1/prompts/{name}/complete"

    below = children(exporter.get_finished_spans(), request)
    render = next(span for span in below if span.name == RENDER_SPAN)
    upstream = next(span for span in below if span.kind == SpanKind.CLIENT)
    assert (render.attributes or {})["registry.prompt"] == "greet"
    assert upstream.name == f"chat {model}"
    assert (upstream.attributes or {})["gen_ai.usage.output_tokens"] == 3
    assert (upstream.attributes or {})["server.address"] == "127.0.0.1"

    # vLLM continues the trace: the upstream request carries the upstream span as its parent.
    [sent] = fault.seen(model, CHAT)
    assert request.context is not None
    assert upstream.context is not None
    assert parse_traceparent(sent.headers["traceparent"]) == (request.context.trace_id, upstream.context.span_id)


class VariantB:
    """Routes every unit into variant "b" of experiment "tone" (version 1)."""

    def route(self, prompt: str, unit: str) -> Routing | None:
        return Routing(ExperimentOut(key="tone", phase=2, variant="b", in_experiment=True), version=1)


async def test_a_routed_completion_names_its_experiment_and_variant_on_the_request_span(
    traced_registry: TracedRegistry, exporter: InMemorySpanExporter, admin: dict[str, str]
) -> None:
    client, _model = await published_client(traced_registry, Tracing.exporting_to(exporter), admin)
    traced_registry.apps[-1].state.runtime.prompts.router = VariantB()

    response = await client.post(COMPLETE, json={**REQUEST, "unit": "u-1"}, headers=admin)

    assert response.status_code == 200, response.text
    attributes = dict((await server_span(exporter, COMPLETE)).attributes or {})
    assert attributes["registry.experiment"] == "tone"
    assert attributes["registry.experiment.phase"] == 2
    assert attributes["registry.experiment.in_experiment"] is True
    assert attributes["registry.variant"] == "b"


async def test_a_streamed_completion_ends_its_upstream_span_with_the_usage(
    traced_registry: TracedRegistry, exporter: InMemorySpanExporter, admin: dict[str, str]
) -> None:
    client, model = await published_client(traced_registry, Tracing.exporting_to(exporter), admin)

    response = await client.post(COMPLETE, json={**REQUEST, "stream": True}, headers=admin)

    assert response.status_code == 200, response.text
    request = await server_span(exporter, COMPLETE)
    [upstream] = [s for s in children(exporter.get_finished_spans(), request) if s.kind == SpanKind.CLIENT]
    assert (upstream.attributes or {})["gen_ai.usage.output_tokens"] == 3
    assert (request.attributes or {})["gen_ai.usage.output_tokens"] == 3
    assert (request.attributes or {})["gen_ai.request.model"] == model


async def test_a_callers_traceparent_is_continued_through_to_the_backend(
    traced_registry: TracedRegistry, exporter: InMemorySpanExporter, admin: dict[str, str], fault: FaultServer
) -> None:
    client, model = await published_client(traced_registry, Tracing.exporting_to(exporter), admin)

    response = await client.post(COMPLETE, json=REQUEST, headers={**admin, "traceparent": CALLER_TRACEPARENT})

    assert response.status_code == 200, response.text
    request = await server_span(exporter, COMPLETE)
    assert request.context is not None
    assert request.parent is not None
    assert (request.context.trace_id, request.parent.span_id) == (CALLER_TRACE_ID, CALLER_SPAN_ID)
    [sent] = fault.seen(model, CHAT)
    assert parse_traceparent(sent.headers["traceparent"])[0] == CALLER_TRACE_ID


async def test_a_fast_path_render_has_its_request_span_and_a_render_child(
    traced_registry: TracedRegistry, exporter: InMemorySpanExporter, admin: dict[str, str]
) -> None:
    client, _model = await published_client(traced_registry, Tracing.exporting_to(exporter), admin)
    fast_path = traced_registry.apps[-1].asgi_handler.app.app  # type: ignore[attr-defined]
    assert isinstance(fast_path, PromptFastPath)
    served_before = fast_path.served

    response = await client.post(RENDER, json=REQUEST, headers={**admin, "traceparent": CALLER_TRACEPARENT})

    assert response.status_code == 200, response.text
    assert fast_path.served == served_before + 1  # answered in front of Litestar
    request = await server_span(exporter, RENDER)
    assert request.name == "POST /v1/prompts/{name}/render"
    assert request.context is not None
    assert request.context.trace_id == CALLER_TRACE_ID
    [render] = children(exporter.get_finished_spans(), request)
    assert render.name == RENDER_SPAN
    assert dict(render.attributes or {}) == {"registry.prompt": "greet", "registry.prompt.version": 1}


async def test_a_failed_request_marks_its_span_as_an_error(
    traced_registry: TracedRegistry, exporter: InMemorySpanExporter, admin: dict[str, str]
) -> None:
    client = await traced_registry(Tracing.exporting_to(exporter))
    await publish(client, admin, backend="fault", model=unique("status:500:all"), max_context_tokens=4096)

    response = await client.post(COMPLETE, json=REQUEST, headers=admin)

    assert response.status_code == 502, response.text
    request = await server_span(exporter, COMPLETE)
    assert request.status.status_code == trace.StatusCode.ERROR
    assert (request.attributes or {})["registry.completion.status"] == "error"
    [upstream] = [s for s in children(exporter.get_finished_spans(), request) if s.kind == SpanKind.CLIENT]
    assert upstream.status.status_code == trace.StatusCode.ERROR
    assert (request.attributes or {})["error.type"] == "502"
    assert (upstream.attributes or {})["error.type"] == (request.attributes or {})["registry.completion.error_type"]


@pytest.fixture
def started_spans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of every span any OpenTelemetry tracer starts (SDK, proxy or no-op) while the test runs."""
    started: list[str] = []
    for tracer_class in (sdk_trace.Tracer, trace.ProxyTracer, trace.NoOpTracer):
        original = tracer_class.start_span

        def counting(self: Any, name: str, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            started.append(name)
            return _original(self, name, *args, **kwargs)

        monkeypatch.setattr(tracer_class, "start_span", counting)
    return started


async def test_with_tracing_off_no_span_is_started_and_no_traceparent_is_sent(
    traced_registry: TracedRegistry, admin: dict[str, str], fault: FaultServer, started_spans: list[str]
) -> None:
    tracing = Tracing.from_environ({})
    assert not tracing.enabled
    client, model = await published_client(traced_registry, tracing, admin)

    rendered = await client.post(RENDER, json=REQUEST, headers=admin)
    completed = await client.post(COMPLETE, json=REQUEST, headers={**admin, "traceparent": CALLER_TRACEPARENT})

    assert (rendered.status_code, completed.status_code) == (200, 200)
    assert started_spans == []
    [sent] = fault.seen(model, CHAT)
    assert "traceparent" not in sent.headers
