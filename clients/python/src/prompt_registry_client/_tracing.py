"""The app's trace context on every request, when the app uses OpenTelemetry.

``opentelemetry-api`` is not a dependency of the client: an app that traces has
it installed, and then each request carries the current span's ``traceparent``
(and ``tracestate``, ``baggage``), so the registry's spans join the app's trace.
Without it, or outside any span, requests go out unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx


def _find_inject() -> Callable[[httpx.Headers], None] | None:
    try:
        from opentelemetry.propagate import inject
    except ImportError:  # the app does not use OpenTelemetry
        return None
    return inject


_INJECT = _find_inject()


def with_trace_context(
    build: Callable[..., httpx.Request], inject: Callable[[httpx.Headers], None] | None = _INJECT
) -> Callable[..., httpx.Request]:
    """``build`` (an httpx ``build_request``) whose requests carry the current trace context."""
    if inject is None:
        return build

    def build_in_trace(method: str, url: str, **options: Any) -> httpx.Request:
        request = build(method, url, **options)
        inject(request.headers)
        return request

    return build_in_trace
