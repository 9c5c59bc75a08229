"""Spans leave the process over OTLP/HTTP: a real receiver on 127.0.0.1 decodes what the exporter posts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from registry.lib.tracing import Tracing
from tests.completions.conftest import publish, unique
from tests.tracing.conftest import TracedRegistry


class OtlpReceiver(ThreadingHTTPServer):
    """Accepts ``POST /v1/traces`` (protobuf) like a collector; keeps the decoded requests."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.exports: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[tuple[str, str, dict[str, str]]]:
        """(service name, span name, string attributes) of every span received."""
        found = []
        for export in self.exports:
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {a.key: a.value.string_value for a in span.attributes}
                        found.append((resource.get("service.name", ""), span.name, attributes))
        return found


class _OtlpHandler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.server.exports.append(export)
        self.server.content_types.append(self.headers.get("content-type", ""))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


async def test_a_render_span_reaches_an_otlp_http_receiver_configured_by_the_standard_variables(
    traced_registry: TracedRegistry,
    receiver: OtlpReceiver,
    admin: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "registry-under-test")
    tracing = Tracing.from_environ()
    assert tracing.choice.exporters == ("otlp",)
    client = await traced_registry(tracing)
    await publish(client, admin, backend="fault", model=unique("ok"))

    response = await client.post("/v1/prompts/greet/render", json={"variables": {"name": "Ada"}}, headers=admin)

    assert response.status_code == 200, response.text
    assert tracing.provider is not None
    assert await asyncio.to_thread(tracing.provider.force_flush)
    spans = receiver.spans()
    assert ("registry-under-test", "POST /v1/prompts/{name}/render") in [(service, name) for service, name, _ in spans]
    render = next(attributes for _, name, attributes in spans if name == "prompt.render")
    assert render["registry.prompt"] == "greet"
    assert set(receiver.content_types) == {"application/x-protobuf"}
