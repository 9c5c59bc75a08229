"""The client SDK sends the app's trace context, so the registry's spans (and vLLM's) join the app's trace."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prompt_registry_client import AsyncRegistryClient
from prompt_registry_client._tracing import with_trace_context

from registry.lib.tracing import Tracing
from tests.completions.conftest import publish, unique
from tests.completions.fault_server import CHAT, FaultServer
from tests.tracing.conftest import TracedRegistry
from tests.tracing.test_spans import COMPLETE, parse_traceparent, server_span


async def test_a_completion_from_the_client_inside_an_app_span_continues_the_apps_trace(
    traced_registry: TracedRegistry, admin: dict[str, str], fault: FaultServer
) -> None:
    exporter = InMemorySpanExporter()
    http = await traced_registry(Tracing.exporting_to(exporter))
    model = unique("ok")
    await publish(http, admin, backend="fault", model=model, max_context_tokens=4096)
    app_tracer = TracerProvider().get_tracer("the-app")  # the app's own SDK, not the registry's

    api_key = admin["Authorization"].removeprefix("Bearer ")

    async with AsyncRegistryClient(str(http.base_url), api_key=api_key) as client:
        with app_tracer.start_as_current_span("handle-user-request") as app_span:
            result = await client.complete("greet", {"name": "Ada"})

    assert result.text
    app_context = app_span.get_span_context()
    request = await server_span(exporter, COMPLETE)
    assert request.context is not None
    assert request.context.trace_id == app_context.trace_id
    assert request.parent is not None
    assert request.parent.span_id == app_context.span_id
    [sent] = fault.seen(model, CHAT)
    assert parse_traceparent(sent.headers["traceparent"])[0] == app_context.trace_id


def test_without_opentelemetry_the_client_builds_requests_unchanged() -> None:
    with httpx.Client() as http:
        build = http.build_request

        assert with_trace_context(build, inject=None) is build


def test_outside_any_span_the_client_sends_no_traceparent() -> None:
    with httpx.Client() as http:
        request = with_trace_context(http.build_request)("GET", "http://registry.invalid/v1/prompts/greet")

    assert "traceparent" not in request.headers
