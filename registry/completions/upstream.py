"""The client side of completion backends: the process's one HTTP client, and per backend
a concurrency limiter with a bounded queue, a circuit breaker, retries and timeouts.

aiohttp and vLLM errors are translated into the domain's errors here, where they
enter. The rules themselves (backoff, breaker transitions, SSE decoding) are
pure functions in ``policy.py`` and ``sse.py``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import msgspec
import structlog
from opentelemetry.trace import Span, SpanKind

from registry.completions.errors import (
    BackendBusyError,
    BackendNotConfiguredError,
    CircuitOpenError,
    ContextLengthExceededError,
    UpstreamBadRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from registry.completions.metrics import CompletionMetrics
from registry.completions.policy import (
    BreakerState,
    BreakerStatus,
    backoff_delay,
    breaker_admit,
    breaker_answered,
    breaker_record,
    breaker_release,
    breaker_retry_after,
    classify_status,
)
from registry.completions.sse import ChunkReader, MalformedStreamError
from registry.lib.http_client import ERROR_HEAD_BYTES, HttpClient, read_at_most
from registry.lib.tracing import (
    Tracing,
    end_span,
    gen_ai_request_attributes,
    gen_ai_usage_attributes,
    inject_trace_context,
    server_attributes,
    upstream_span_name,
)
from registry.settings import BackendSettings

logger = structlog.get_logger("registry.completions.upstream")

_json = msgspec.json.Encoder()
_BUSY_RETRY_AFTER = "1"


def http_client_for(backends: Mapping[str, BackendSettings]) -> HttpClient:
    """The process's one HTTP client: pooled connections, sized for every backend's concurrency
    plus room for webhook deliveries. Idle connections are dropped before vLLM's (uvicorn's) 5 s
    keep-alive ends, so a request rarely races the server closing the connection it reuses
    (that race is retried anyway)."""
    connections = sum(b.max_concurrency for b in backends.values()) + 64
    return HttpClient(max_connections=connections, keepalive_seconds=4.0)


class CircuitBreaker:
    """The breaker state machine of ``policy.py`` bound to a clock and a metrics gauge."""

    def __init__(
        self,
        *,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float],
        on_change: Callable[[BreakerStatus], None],
    ) -> None:
        self.state = BreakerState()
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._on_change = on_change

    def _set(self, state: BreakerState) -> None:
        if state.status != self.state.status:
            self._on_change(state.status)
        self.state = state

    def admit(self, backend: str) -> None:
        state, admitted = breaker_admit(self.state, now=self._clock(), cooldown=self._cooldown)
        if not admitted:
            retry_after = breaker_retry_after(self.state, now=self._clock(), cooldown=self._cooldown)
            raise CircuitOpenError(
                f"backend '{backend}' failed repeatedly; requests resume after a successful probe",
                headers={"Retry-After": str(max(1, round(retry_after)))},
            )
        self._set(state)

    def record(self, *, failed: bool) -> None:
        self._set(breaker_record(self.state, failed=failed, now=self._clock(), threshold=self._threshold))

    def answered(self) -> None:
        """A first token came: a half-open breaker closes (``policy.breaker_answered``)."""
        self._set(breaker_answered(self.state))

    def release(self) -> None:
        self._set(breaker_release(self.state))


class ConcurrencyLimiter:
    """At most ``max_concurrency`` requests in flight, ``max_queue`` waiting; beyond that, refuse at once."""

    def __init__(self, backend: str, *, max_concurrency: int, max_queue: int, metrics: CompletionMetrics) -> None:
        self._backend = backend
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._max_queue = max_queue
        self.waiting = 0
        self._queue_gauge = metrics.queue_depth.labels(backend)
        self._in_flight = metrics.in_flight.labels(backend)

    @property
    def full(self) -> bool:
        """Whether every slot is taken: ``acquire`` would wait (or refuse, with the queue full)."""
        return self._semaphore.locked()

    async def acquire(self) -> bool:
        """Take a slot; True when the request had to wait for one."""
        waited = False
        if self._semaphore.locked():
            if self.waiting >= self._max_queue:
                raise BackendBusyError(
                    f"backend '{self._backend}' is at its concurrency limit and its queue is full",
                    headers={"Retry-After": _BUSY_RETRY_AFTER},
                )
            self.waiting += 1
            waited = True
            self._queue_gauge.inc()
            try:
                await self._semaphore.acquire()
            finally:
                self.waiting -= 1
                self._queue_gauge.dec()
        else:
            await self._semaphore.acquire()
        self._in_flight.inc()
        return waited

    def release(self) -> None:
        self._in_flight.dec()
        self._semaphore.release()


class BackendMetrics:
    """One backend's series of the per-completion metrics, looked up once: ``labels()`` costs more than the update."""

    def __init__(self, metrics: CompletionMetrics, backend: str) -> None:
        self.ttft = metrics.upstream_ttft.labels(backend)
        self.latency = metrics.upstream_latency.labels(backend)
        self.input_tokens = metrics.tokens.labels(backend, "input")
        self.output_tokens = metrics.tokens.labels(backend, "output")
        self.awaiting_first_token = metrics.awaiting_first_token.labels(backend)


@dataclass
class Backend:
    name: str
    settings: BackendSettings
    breaker: CircuitBreaker
    limiter: ConcurrencyLimiter
    metrics: BackendMetrics
    model_context: dict[str, int] = field(default_factory=dict)  # max_model_len by model, as the backend said

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.settings.api_key:
            headers["authorization"] = f"Bearer {self.settings.api_key}"
        return headers


def _status_error(
    status: int, body: str, backend: str, retry_after: str | None = None
) -> UpstreamError | ContextLengthExceededError:
    outcome = classify_status(status, body)
    message = _error_message(body)
    if outcome == "context_length":
        return ContextLengthExceededError(f"backend '{backend}': {message}")
    if outcome == "bad_request":
        return UpstreamBadRequestError(f"backend '{backend}' refused the request: {message}")
    error = UpstreamUnavailableError(f"backend '{backend}' answered {status}: {message}")
    error.retryable = outcome == "retry"
    error.counts_against_breaker = status >= 500
    error.retry_after = _seconds(retry_after)
    return error


def _error_message(body: str) -> str:
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body[:300] or "no details"
    if isinstance(decoded, dict):
        error = decoded.get("error", decoded)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(decoded.get("message"), str):
            return str(decoded["message"])[:500]
    return body[:300]


def translate_transport_error(exc: Exception, backend: str, *, before_first_token: bool) -> UpstreamError:
    """aiohttp's exceptions as domain errors. Only connection failures before any token may be retried."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        error: UpstreamError = UpstreamTimeoutError(f"backend '{backend}': timed out connecting")
        error.retryable = True
    elif isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        error = UpstreamTimeoutError(
            f"backend '{backend}': no first token within the timeout"
            if before_first_token
            else f"backend '{backend}': the completion did not finish within the timeout"
        )
    elif isinstance(exc, MalformedStreamError):
        error = UpstreamUnavailableError(f"backend '{backend}' sent a malformed stream: {exc}")
    elif isinstance(exc, aiohttp.ClientConnectorError):
        error = UpstreamUnavailableError(f"backend '{backend}' is unreachable: {exc or type(exc).__name__}")
        error.retryable = True
    elif isinstance(exc, aiohttp.ClientError | OSError):
        error = UpstreamUnavailableError(
            f"backend '{backend}' closed the connection" + ("" if before_first_token else " mid-stream")
        )
        error.retryable = before_first_token
    else:
        error = UpstreamUnavailableError(f"backend '{backend}' failed: {type(exc).__name__}")
    return error


StreamOutcome = Literal["ok", "failed", "abandoned"]


class UpstreamStream:
    """An upstream completion whose first token has arrived; iterate it for the rest.

    Closing it early (the caller went away) closes the connection, which makes
    vLLM abort the request. It holds a concurrency slot until closed.
    """

    def __init__(
        self,
        client: UpstreamClient,
        backend: Backend,
        response: aiohttp.ClientResponse,
        *,
        started: float,
        deadline: float,
    ) -> None:
        self._client = client
        self.backend = backend
        self._response = response
        self._read_any = response.content.readany  # the bytes that have come (b"" at the body's end)
        self.reader = ChunkReader()  # what the chunks said so far: finish reason, tokens, the end
        self.started = started
        self.deadline = deadline
        self.head: list[str] = []  # the text read up to the first token
        self.ttft: float | None = None
        self.outcome: StreamOutcome | None = None
        self.span: Span | None = None  # the upstream call's span, ended with the stream
        self._deadline_timer: asyncio.TimerHandle | None = None
        self.expired = False  # the deadline passed while the rest of the stream was read
        # What the request's earlier attempts on this backend reported spending (a prefill) before they failed
        # without a token and were retried (``UpstreamClient._open_stream``): spent all the same.
        self.retried_input_tokens = 0
        self.retried_output_tokens = 0

    @property
    def finish_reason(self) -> str | None:
        return self.reader.finish_reason

    @property
    def input_tokens(self) -> int:
        """The prompt's tokens as the backend reported them, over every attempt of the request."""
        return self.retried_input_tokens + self.reader.input_tokens

    @property
    def output_tokens(self) -> int:
        """Tokens generated so far (``ChunkReader.output_tokens``): exact for a completion cut short."""
        return self.retried_output_tokens + self.reader.output_tokens

    async def _read(self) -> str:
        """The text of the next read from the socket (see ``ChunkReader.read``); at the body's end, its last."""
        data = await self._read_any()
        return self.reader.read(data) if data else self.reader.end()

    async def read_head(self) -> None:
        """Read up to the first token (or the end); the caller bounds this with the first-token timeout."""
        reader = self.reader
        while not reader.done and reader.failure is None:
            text = await self._read()
            if text:
                self.head.append(text)
                break
            if reader.finish_reason:
                break
        self.ttft = time.monotonic() - self.started

    async def texts(self) -> AsyncIterator[str]:
        """The answer's text as it comes, from the first token, one piece per read (never empty); raises domain
        errors (never retried: tokens were sent)."""
        for text in self.head:
            yield text
        name, reader = self.backend.name, self.reader
        # One timer for the rest of the stream, not one per read: at the deadline it closes the
        # connection, which ends the read under way (or the next one) at once.
        self._deadline_timer = asyncio.get_running_loop().call_later(
            max(0.0, self.deadline - time.monotonic()), self._expire
        )
        # As ``_read`` in a loop, inline: this runs once per token. ``readany`` itself, not the iterator of
        # ``iter_any`` around it: one coroutine less to resume per read.
        read_any, read = self._read_any, reader.read
        while not reader.done:
            try:
                if reader.failure is not None:
                    raise reader.failure
                data = await read_any()
                text = read(data) if data else reader.end()
            except (aiohttp.ClientError, OSError, MalformedStreamError, TimeoutError) as exc:
                await self.close("failed")
                cause = TimeoutError() if self.expired else exc  # the deadline closed the connection
                raise translate_transport_error(cause, name, before_first_token=False) from exc
            if text:
                yield text
        await self._drain()
        await self.close("ok")

    def _expire(self) -> None:
        self.expired = True
        self._response.close()

    async def _drain(self) -> None:
        """Read the body's end after [DONE], so the connection goes back to the pool instead of closing."""
        try:
            while await self._read_any():
                pass
        except (aiohttp.ClientError, OSError):
            pass  # the completion is whole; a connection that ends badly (or at the deadline) is just not reused

    async def close(self, outcome: StreamOutcome = "abandoned") -> None:
        """Release the slot and tell the breaker first: the close itself may be cancelled."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._client.finished(self, outcome)
        if self.span is not None:
            usage = gen_ai_usage_attributes(self.input_tokens, self.output_tokens, self.finish_reason)
            end_span(self.span, usage, error_type=None if outcome == "ok" else f"stream_{outcome}")
        if outcome == "ok":
            self._response.release()  # read to the end: the connection goes back to the pool
        else:
            self._response.close()  # closing the connection is what makes vLLM abort the request


class UpstreamClient:
    def __init__(
        self,
        http: HttpClient,
        backends: Mapping[str, BackendSettings],
        metrics: CompletionMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.http = http
        self.metrics = metrics
        self._jitter = jitter
        self.tracing = Tracing()  # off; the app sets the process's own
        self.backends = {
            name: Backend(
                name,
                settings,
                CircuitBreaker(
                    threshold=settings.breaker_failures,
                    cooldown=settings.breaker_cooldown,
                    clock=clock,
                    on_change=_breaker_gauge(metrics, name),
                ),
                ConcurrencyLimiter(
                    name, max_concurrency=settings.max_concurrency, max_queue=settings.max_queue, metrics=metrics
                ),
                BackendMetrics(metrics, name),
            )
            for name, settings in backends.items()
        }
        for name in self.backends:
            metrics.breaker_changed(name, BreakerStatus.CLOSED)

    def backend(self, name: str) -> Backend:
        backend = self.backends.get(name)
        if backend is None:
            raise BackendNotConfiguredError(f"the model config names backend '{name}', which is not configured")
        return backend

    async def open_stream(
        self,
        backend: Backend,
        path: str,
        payload: Mapping[str, Any],
        *,
        accepted: Callable[[], object] | None = None,
        attempt_failed: Callable[[int, int], object] | None = None,
    ) -> UpstreamStream:
        """Send a streaming completion request and wait for its first token.

        Connection errors, 429 and 503 are retried with backoff while no token
        has arrived; the breaker is asked before every attempt. The returned
        stream holds a concurrency slot until it is closed. ``accepted`` is called
        when the backend has taken the request (answered 200): from then on it reads
        the prompt, whether or not a token follows. ``attempt_failed`` is called when
        an attempt fails before its first token, with the input and output tokens the
        request's attempts reported so far: they are spent even if the caller leaves
        during the retry, or the retry is refused with an input error, which carry none.
        """
        settings = backend.settings
        deadline = time.monotonic() + settings.total_timeout
        body = _json.encode(payload)
        headers = backend.headers()
        span = self._start_span(backend, path, payload, headers)
        try:
            stream = await self._open_stream(backend, path, body, headers, deadline, span, accepted, attempt_failed)
        except BaseException as exc:
            if span is not None:
                end_span(span, {}, error_type=getattr(exc, "type", None) or type(exc).__name__)
            raise
        stream.span = span
        return stream

    def _start_span(
        self, backend: Backend, path: str, payload: Mapping[str, Any], headers: dict[str, str]
    ) -> Span | None:
        """The upstream call's span (a child of the request's), its context sent on as ``traceparent``."""
        tracer = self.tracing.tracer
        if tracer is None:
            return None
        span = tracer.start_span(
            upstream_span_name(path, str(payload.get("model", ""))),
            kind=SpanKind.CLIENT,
            attributes={**gen_ai_request_attributes(path, payload), **server_attributes(backend.settings.url)},
        )
        inject_trace_context(headers, span)
        return span

    async def _open_stream(
        self,
        backend: Backend,
        path: str,
        body: bytes,
        headers: dict[str, str],
        deadline: float,
        span: Span | None,
        accepted: Callable[[], object] | None,
        attempt_failed: Callable[[int, int], object] | None,
    ) -> UpstreamStream:
        settings = backend.settings
        queued = await self._acquire(backend, deadline)
        # What the attempts that failed reported spending before their first token (a prefill): the request is
        # charged it whether a retry then answers (the stream's tokens) or the last attempt fails too (the error's).
        spent_input = spent_output = 0
        try:
            for attempt in range(settings.max_retries + 1):
                backend.breaker.admit(backend.name)
                try:
                    stream = await self._attempt(backend, path, body, headers, deadline, accepted, queued=queued)
                    backend.breaker.answered()
                    stream.retried_input_tokens, stream.retried_output_tokens = spent_input, spent_output
                    return stream
                except UpstreamError as exc:
                    spent_input += exc.input_tokens
                    spent_output += exc.output_tokens
                    exc.input_tokens, exc.output_tokens = spent_input, spent_output
                    if attempt_failed is not None:
                        attempt_failed(spent_input, spent_output)
                    if exc.about_backend:
                        backend.breaker.record(failed=exc.counts_against_breaker)
                    else:
                        backend.breaker.release()
                    self.metrics.upstream_errors.labels(backend.name, exc.type).inc()
                    wait = backoff_delay(
                        attempt,
                        base=settings.retry_base_delay,
                        cap=settings.retry_max_delay,
                        jitter=self._jitter(),
                        retry_after=exc.retry_after,
                    )
                    if not exc.retryable or attempt == settings.max_retries or time.monotonic() + wait > deadline:
                        raise
                    self.metrics.retries.labels(backend.name).inc()
                    if span is not None:
                        span.add_event("retry", {"attempt": attempt + 1, "error.type": exc.type})
                    logger.info("retrying upstream", backend=backend.name, attempt=attempt + 1, error=exc.type)
                    await asyncio.sleep(wait)
                except ContextLengthExceededError:
                    backend.breaker.record(failed=False)
                    raise
                except BaseException:
                    backend.breaker.release()
                    raise
            raise AssertionError("unreachable")  # pragma: no cover
        except BaseException:
            backend.limiter.release()
            raise

    async def _acquire(self, backend: Backend, deadline: float) -> bool:
        """A concurrency slot, waited for until the deadline at most; True when the request had to wait.

        A request still waiting at its deadline never reached the backend: it fails with a timeout that
        says nothing about the backend's health, so the breaker does not count it.
        """
        limiter = backend.limiter
        if not limiter.full:  # taken at once, without suspending: no timer for the common case
            return await limiter.acquire()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await limiter.acquire()
        except TimeoutError:
            error = UpstreamTimeoutError(
                f"backend '{backend.name}': no free slot within the timeout ({backend.settings.total_timeout:g} s); "
                "it is busy"
            )
            error.about_backend = False
            self.metrics.upstream_errors.labels(backend.name, error.type).inc()
            raise error from None

    async def _attempt(
        self,
        backend: Backend,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        deadline: float,
        accepted: Callable[[], object] | None,
        *,
        queued: bool = False,
    ) -> UpstreamStream:
        settings = backend.settings
        started = time.monotonic()
        # No read timeout: the first token's deadline bounds the head, the stream's deadline the rest,
        # and a read timeout would reset a timer on every packet.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout)
        response: aiohttp.ClientResponse | None = None
        stream: UpstreamStream | None = None
        try:
            async with asyncio.timeout(max(0.0, min(deadline, started + settings.first_token_timeout) - started)):
                response = await self.http.session.post(
                    settings.url + path, data=body, headers=headers, timeout=timeout
                )
                if response.status >= 300:
                    head, more = await read_at_most(response, ERROR_HEAD_BYTES)
                    if more:
                        response.close()  # the rest is never read: the connection cannot be reused
                    else:
                        response.release()
                    text = head.decode(errors="replace")
                    raise _status_error(response.status, text, backend.name, response.headers.get("retry-after"))
                if accepted is not None:
                    accepted()
                stream = UpstreamStream(self, backend, response, started=started, deadline=deadline)
                backend.metrics.awaiting_first_token.inc()
                try:
                    await stream.read_head()
                finally:
                    backend.metrics.awaiting_first_token.dec()
        except (aiohttp.ClientError, OSError, MalformedStreamError, TimeoutError) as exc:
            if response is not None:
                response.close()
            error = translate_transport_error(exc, backend.name, before_first_token=True)
            if stream is not None:  # the backend took the request: what its chunks reported spending so far
                error.input_tokens, error.output_tokens = stream.reader.input_tokens, stream.reader.output_tokens
                # Counted here: a stream that fails before its first token is never closed (``finished``).
                backend.metrics.input_tokens.inc(error.input_tokens)
                backend.metrics.output_tokens.inc(error.output_tokens)
            cut_short = started + settings.first_token_timeout > deadline
            if queued and cut_short and not isinstance(exc, aiohttp.ClientError):
                # The request's deadline cut the first token's time short, and the wait for a slot had spent
                # it: the backend was not given its first_token_timeout, so its slowness is not known.
                error.about_backend = False
            raise error from exc
        except BaseException:
            if response is not None:
                response.close()
            raise
        if stream.ttft is not None:
            backend.metrics.ttft.observe(stream.ttft)
        return stream

    def finished(self, stream: UpstreamStream, outcome: StreamOutcome) -> None:
        backend = stream.backend
        backend.limiter.release()
        # Tokens a backend generated count whether or not the completion finished (this attempt's: those of the
        # attempts before it were counted as they failed).
        backend.metrics.input_tokens.inc(stream.reader.input_tokens)
        backend.metrics.output_tokens.inc(stream.reader.output_tokens)
        if outcome == "ok":
            backend.breaker.record(failed=False)
            backend.metrics.latency.observe(time.monotonic() - stream.started)
        elif outcome == "failed":
            backend.breaker.record(failed=True)
        else:
            backend.breaker.release()

    async def count_prompt_tokens(self, backend: Backend, payload: Mapping[str, Any]) -> tuple[int, int | None]:
        """Tokens of the prompt as the backend counts them (vLLM ``/tokenize``), and its context size."""
        request: dict[str, Any] = {"model": payload["model"]}
        if "messages" in payload:
            request |= {"messages": payload["messages"], "add_generation_prompt": True}
        else:
            request["prompt"] = payload["prompt"]
        settings = backend.settings
        timeout = aiohttp.ClientTimeout(total=settings.first_token_timeout, sock_connect=settings.connect_timeout)
        body = _json.encode(request)
        # The answer lists the prompt's token ids, a few bytes each and at most one per byte of the prompt (plus a
        # chat template's): one much longer than the request is not a count, and is not read whole.
        limit = 16 * len(body) + ERROR_HEAD_BYTES
        try:
            async with self.http.session.post(
                settings.url + "/tokenize", data=body, headers=backend.headers(), timeout=timeout
            ) as response:
                status = response.status
                content, more = await read_at_most(response, ERROR_HEAD_BYTES if status >= 300 else limit)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise translate_transport_error(exc, backend.name, before_first_token=True) from exc
        if status >= 300:
            raise _status_error(status, content.decode(errors="replace"), backend.name)
        if more:
            raise UpstreamUnavailableError(f"backend '{backend.name}' sent a token count of over {limit} bytes")
        try:
            counted = msgspec.json.decode(content, type=_TokenCount)
        except msgspec.DecodeError as exc:
            raise UpstreamUnavailableError(f"backend '{backend.name}' sent a malformed token count") from exc
        if counted.max_model_len:
            backend.model_context[str(payload["model"])] = counted.max_model_len
        return counted.count, counted.max_model_len


def _breaker_gauge(metrics: CompletionMetrics, backend: str) -> Callable[[BreakerStatus], None]:
    return lambda status: metrics.breaker_changed(backend, status)


class _TokenCount(msgspec.Struct):
    count: int
    max_model_len: int | None = None


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None  # an HTTP date: not worth parsing for a capped wait
