"""OpenTelemetry tracing: a span per request, child spans for render and the upstream call.

Configured by the standard ``OTEL_*`` variables, which the OpenTelemetry SDK
itself reads (endpoint, headers, service name, sampler, batch sizes), so they
are not repeated in ``registry/settings.py``. Tracing is off unless an exporter
is asked for (``tracing_choice`` below is the rule). When it is off no tracer
exists: the middleware is not installed and the span helpers get ``None``, so
the request path creates no span at all, not even a no-op one.

The attribute builders are pure functions (GenAI semantic conventions plus the
registry's own ``registry.*`` attributes); the classes at the end do the I/O.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from registry import __version__

Attributes = dict[str, AttributeValue]

SERVICE_NAME = "prompt-registry"
GEN_AI_PROVIDER = "vllm"  # every backend speaks vLLM's OpenAI-compatible API
SUPPORTED_EXPORTERS = ("otlp", "console")
RENDER_SPAN = "prompt.render"


# --------------------------------------------------------------------------- the rule: on or off


@dataclass(frozen=True, slots=True)
class TracingChoice:
    enabled: bool
    exporters: tuple[str, ...]
    reason: str


def tracing_choice(environ: Mapping[str, str]) -> TracingChoice:
    """On when an exporter is asked for, off otherwise.

    ``OTEL_SDK_DISABLED=true`` turns it off whatever else is set;
    ``OTEL_TRACES_EXPORTER`` names the exporters (``otlp``, ``console``; ``none`` is off);
    without it, an ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its ``_TRACES_`` form) means ``otlp``.
    Only OTLP over HTTP/protobuf ships, so asking for gRPC is refused at start.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingChoice(False, (), "OTEL_SDK_DISABLED=true")
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        exporters = tuple(dict.fromkeys(n.strip() for n in named.split(",") if n.strip() and n.strip() != "none"))
        unknown = [name for name in exporters if name not in SUPPORTED_EXPORTERS]
        if unknown:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}; supported: {', '.join(SUPPORTED_EXPORTERS)}, none"
            )
        reason = f"OTEL_TRACES_EXPORTER={named}"
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        exporters, reason = ("otlp",), "an OTLP endpoint is set"
    else:
        return TracingChoice(False, (), "no exporter configured")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if "otlp" in exporters and protocol and protocol.strip() != "http/protobuf":
        raise ValueError(f"OTLP protocol '{protocol}' is not supported; use http/protobuf")
    return TracingChoice(bool(exporters), exporters, reason)


# --------------------------------------------------------------------------- attributes (pure)


def http_request_attributes(scope: HTTPScope) -> Attributes:
    attributes: Attributes = {
        "http.request.method": scope["method"],
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
    }
    for name, value in scope["headers"]:
        if name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
    return attributes


def http_span_name(method: str, route: str | None) -> str:
    """``{method} {route}`` as the HTTP conventions name server spans; the method alone when unrouted."""
    return f"{method} {route}" if route else method


def http_response_attributes(route: str | None, status: int, request_id: str | None) -> Attributes:
    attributes: Attributes = {"http.response.status_code": status}
    if route:
        attributes["http.route"] = route
    if request_id:
        attributes["registry.request_id"] = request_id
    if status >= 500:
        attributes["error.type"] = str(status)
    return attributes


def operation_name(upstream_path: str) -> str:
    """The GenAI operation of an OpenAI-compatible path."""
    return "chat" if upstream_path.endswith("/chat/completions") else "text_completion"


_REQUEST_PARAMETERS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}


def gen_ai_request_attributes(upstream_path: str, payload: Mapping[str, Any]) -> Attributes:
    """What was asked of the model, in the GenAI semantic conventions."""
    attributes: Attributes = {
        "gen_ai.operation.name": operation_name(upstream_path),
        "gen_ai.provider.name": GEN_AI_PROVIDER,
        "gen_ai.system": GEN_AI_PROVIDER,  # the name before the conventions' 1.37 rename, still read by many tools
        "gen_ai.request.model": str(payload.get("model", "")),
    }
    for key, attribute in _REQUEST_PARAMETERS.items():
        value = payload.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[attribute] = value
    stop = payload.get("stop")
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        attributes["gen_ai.request.stop_sequences"] = stop
    return attributes


def gen_ai_usage_attributes(input_tokens: int, output_tokens: int, finish_reason: str | None) -> Attributes:
    attributes: Attributes = {"gen_ai.usage.input_tokens": input_tokens, "gen_ai.usage.output_tokens": output_tokens}
    if finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [finish_reason]
    return attributes


def server_attributes(url: str) -> Attributes:
    """The backend's address and port, as the conventions name the server of a client span."""
    parts = urlsplit(url)
    attributes: Attributes = {}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    if port:
        attributes["server.port"] = port
    return attributes


def upstream_span_name(upstream_path: str, model: str) -> str:
    """``{operation} {model}``, the GenAI conventions' name for an inference span."""
    return f"{operation_name(upstream_path)} {model}"


def render_attributes(
    *,
    prompt: str,
    version: int,
    experiment: str | None = None,
    phase: int | None = None,
    variant: str | None = None,
    in_experiment: bool | None = None,
) -> Attributes:
    """The registry's own attributes of a rendered prompt (and the experiment that routed it)."""
    attributes: Attributes = {"registry.prompt": prompt, "registry.prompt.version": version}
    if experiment is not None:
        attributes["registry.experiment"] = experiment
        if phase is not None:
            attributes["registry.experiment.phase"] = phase
        if in_experiment is not None:
            attributes["registry.experiment.in_experiment"] = in_experiment
        if variant is not None:
            attributes["registry.variant"] = variant
    return attributes


def config_attributes(*, config: str, version: int, backend: str) -> Attributes:
    return {"registry.config": config, "registry.config.version": version, "registry.backend": backend}


def outcome_attributes(
    *, status: str, error_type: str | None, cached: bool, fallback_used: bool, cost: float
) -> Attributes:
    attributes: Attributes = {
        "registry.completion.status": status,
        "registry.completion.cached": cached,
        "registry.completion.fallback_used": fallback_used,
        "registry.completion.cost": cost,
    }
    if error_type:  # the request span's own error.type is its HTTP status, set by the middleware
        attributes["registry.completion.error_type"] = error_type
    return attributes


# --------------------------------------------------------------------------- spans (I/O)


def _headers_carrier(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}


def annotate_current_span(attributes: Attributes) -> None:
    """Add attributes to the span the request runs in (its server span), unless it has ended (a completion whose
    record waited for its prompt to be counted, ``registry.completions.prefill``)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


def inject_trace_context(headers: dict[str, str], span: Span) -> None:
    """Add ``traceparent`` (and ``tracestate``/``baggage``) for ``span`` to an outgoing request's headers."""
    propagate.inject(headers, context=trace.set_span_in_context(span))


def end_span(span: Span, attributes: Attributes, *, error_type: str | None = None) -> None:
    span.set_attributes(attributes)
    if error_type is not None:
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
    span.end()


class TracingMiddleware:
    """The server span of every HTTP request, outside everything else, so the fast path is traced too.

    An incoming ``traceparent`` (a caller's, or the client SDK's) is continued.
    The span is named once the route is known (``scope["path_template"]``).
    """

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        parent = propagate.extract(_headers_carrier(scope["headers"]))
        status = 0

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=http_request_attributes(scope),
            set_status_on_exception=False,
        ) as span:
            try:
                await self.app(scope, receive, send_with_status)
            except BaseException:
                status = status or 500
                raise
            finally:
                route = scope.get("path_template")
                span.update_name(http_span_name(method, route))
                span.set_attributes(
                    http_response_attributes(route, status or 500, scope.get("state", {}).get("request_id"))
                )
                if (status or 500) >= 500:
                    span.set_status(Status(StatusCode.ERROR))


class Tracing:
    """The process's tracer, or none when tracing is off (see ``tracing_choice``)."""

    def __init__(self, provider: TracerProvider | None = None, *, choice: TracingChoice | None = None) -> None:
        self.provider = provider
        self.tracer: Tracer | None = provider.get_tracer("registry", __version__) if provider is not None else None
        self.choice = choice or TracingChoice(provider is not None, (), "configured in code")

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Tracing:
        """From the ``OTEL_*`` variables; the exporters read their own (endpoint, headers, timeouts)."""
        environ = os.environ if environ is None else environ
        choice = tracing_choice(environ)
        if not choice.enabled:
            return cls(choice=choice)
        processors: list[SpanProcessor] = [BatchSpanProcessor(_exporter(name)) for name in choice.exporters]
        return cls(_provider(environ, processors), choice=choice)

    @classmethod
    def exporting_to(cls, exporter: SpanExporter) -> Tracing:
        """Every span handed to ``exporter`` as it ends (tests use the SDK's in-memory exporter)."""
        return cls(_provider(os.environ, [SimpleSpanProcessor(exporter)]))

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` behind the request span; ``app`` itself when tracing is off."""
        return app if self.tracer is None else TracingMiddleware(app, self.tracer)

    async def shutdown(self) -> None:
        """Export what is still buffered (a thread: the exporter blocks on its HTTP call)."""
        if self.provider is not None:
            await asyncio.to_thread(self.provider.shutdown)


def _provider(environ: Mapping[str, str], processors: Sequence[SpanProcessor]) -> TracerProvider:
    named = "OTEL_SERVICE_NAME" in environ or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    defaults: Attributes = {"service.version": __version__}
    if not named:
        defaults["service.name"] = SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(defaults))  # the sampler comes from OTEL_TRACES_SAMPLER
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # only loaded when used

    return OTLPSpanExporter()
