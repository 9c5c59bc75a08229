"""What the sync and the async client share beyond the core: options, tracking, counters, exit handling."""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import httpx

from prompt_registry_client._config import DEFAULT_TIMEOUT, BatchPolicy, CachePolicy, RetryPolicy
from prompt_registry_client._core import BuildRequest, Core, connection
from prompt_registry_client._models import FallbackTemplate
from prompt_registry_client.templating import RenderLimits


def as_timeout(value: float | httpx.Timeout) -> httpx.Timeout:
    return value if isinstance(value, httpx.Timeout) else httpx.Timeout(value)


class ClientOptions:
    """The constructor arguments both clients take, checked once."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        completion_timeout: float | httpx.Timeout = 120.0,
        retries: RetryPolicy | None = None,
        cache: CachePolicy | None = None,
        batches: BatchPolicy | None = None,
        fallbacks: Mapping[str, FallbackTemplate] | None = None,
        render_limits: RenderLimits | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url, self.headers = connection(base_url, api_key, headers)
        self.timeout = as_timeout(timeout)
        completion = as_timeout(completion_timeout)
        self.completion_timeout = httpx.Timeout(completion.read, connect=self.timeout.connect)
        self.retries = retries or RetryPolicy()
        self.cache = cache or CachePolicy()
        self.batches = batches or BatchPolicy()
        self.fallbacks = fallbacks
        self.render_limits = render_limits

    def core(self, build: BuildRequest, *, on_cached: Callable[[], None], on_queued: Callable[[], None]) -> Core:
        return Core(
            base_url=self.base_url,
            build=build,
            retries=self.retries,
            cache=self.cache,
            batches=self.batches,
            render_limits=self.render_limits,
            fallbacks=self.fallbacks,
            completion_timeout=self.completion_timeout,
            on_cached=on_cached,
            on_queued=on_queued,
        )


class BaseClient:
    """Tracking and counters; subclasses drive the core with their own I/O."""

    _core: Core
    _options: ClientOptions

    def track(
        self,
        unit: str,
        metric: str,
        value: float = 1.0,
        *,
        experiment: str | None = None,
        timestamp: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Record an outcome of ``unit`` (a metric value), sent in the background in batches.

        Never blocks and never raises for the service's sake: events are queued, sent every
        ``BatchPolicy.flush_interval``, retried when the service is away, and flushed on
        ``close()``, on leaving a ``with`` block and at interpreter exit. Each event gets an
        idempotency key (returned; pass your own to deduplicate across processes), so an
        event sent twice is counted once. Once the client is closed nothing would send it: the
        event is dropped, counted in ``dropped_events``, with a warning the first time.

        Example::

            registry.track("user-42", "thumbs_up")
            registry.track("user-42", "latency_ms", 812.0, experiment="greet-tone")
        """
        return self._core.track(
            unit, metric, value, experiment=experiment, timestamp=timestamp, idempotency_key=idempotency_key
        )

    @property
    def base_url(self) -> str:
        return self._options.base_url

    @property
    def pending_events(self) -> int:
        """Events and exposures waiting to be sent."""
        return self._core.outbox.pending

    @property
    def dropped_events(self) -> int:
        """Events and exposures not sent: the queue was full, the client was closed, or the service refused them."""
        return self._core.outbox.dropped + self._core.outbox.rejected


def register_at_exit(client: Any, method: Callable[[Any], None]) -> Callable[[], None]:
    """Call ``method(client)`` at interpreter exit if the client still exists; returns what to unregister."""
    ref = weakref.ref(client)

    def at_exit() -> None:
        alive = ref()
        if alive is not None:
            method(alive)

    atexit.register(at_exit)
    return at_exit
