"""What both clients do, written once, without I/O.

Every operation is a generator (a *flow*) that yields what it needs done: send a
request, read a streamed body, sleep, start a background flow. The sync client
drives flows with ``httpx.Client`` and threads, the async client with
``httpx.AsyncClient`` and tasks; retries, the cache, local assignment and batching
are the same code in both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Hashable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar, cast
from urllib.parse import quote

import httpx

from prompt_registry_client._cache import CacheEntry, Freshness, TtlCache
from prompt_registry_client._config import (
    COMPLETION_RETRY_STATUSES,
    RETRY_STATUSES,
    BatchPolicy,
    CachePolicy,
    RetryPolicy,
    parse_retry_after,
)
from prompt_registry_client._errors import (
    NotFound,
    RateLimited,
    RegistryError,
    ServiceUnavailable,
    Unauthorized,
    error_from_problem,
    is_outage,
)
from prompt_registry_client._models import (
    Completion,
    CompletionBackend,
    CompletionEvent,
    CompletionFallback,
    Experiment,
    ExperimentAssignment,
    FallbackTemplate,
    Prompt,
    TextDelta,
    Usage,
    Variant,
    completion_from_json,
    done_from_json,
    experiment_from_json,
    fallback_completion,
    fallback_prompt,
    metadata_from_json,
    prompt_from_json,
)
from prompt_registry_client._outbox import KINDS, BatchKind, Outbox
from prompt_registry_client._sse import ServerSentEvent
from prompt_registry_client._tracing import with_trace_context
from prompt_registry_client.templating import RenderLimits

logger = logging.getLogger("prompt_registry_client")

T = TypeVar("T")
V = TypeVar("V")
DEFAULT_URL = "http://127.0.0.1:8000"
Label = Literal["production", "staging", "latest"]
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# A proxy's answer that it got none from the service in time (502, 504): the request may have reached it and run.
_MAY_HAVE_RUN = frozenset({502, 504})
_EXPOSURE_ATTEMPTS = 3  # sends of an exposure refused because its experiment is not running (yet) there
_MAX_DOUBLINGS = 64  # a backoff doubles at most this often: far past any ceiling, far below a float's range


def backoff(base: float, failures: int, ceiling: float) -> float:
    """``base`` doubled per failure, at most ``ceiling``; any number of failures (2.0**1024 overflows)."""
    return min(ceiling, base * 2.0 ** min(failures, _MAX_DOUBLINGS))


def encode_name(name: str) -> str:
    """Names may contain '/'; the API takes it encoded as %2F so the name stays one path segment."""
    return quote(name, safe="")


def connection(
    base_url: str | None, api_key: str | None, headers: Mapping[str, str] | None
) -> tuple[str, dict[str, str]]:
    """The service's URL and the headers of every request (REGISTRY_URL and REGISTRY_API_KEY by default)."""
    url = (base_url or os.environ.get("REGISTRY_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("REGISTRY_API_KEY")
    merged = {"User-Agent": "prompt-registry-client", **(headers or {})}
    if key:
        merged["Authorization"] = f"Bearer {key}"
    return url, merged


# --------------------------------------------------------------------------- what flows ask for


@dataclass(frozen=True, slots=True)
class Send:
    request: httpx.Request
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Read:
    """Read a streamed response's body and release its connection."""

    response: httpx.Response


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Spawn:
    """Run ``flow`` in the background, unless one with the same ``key`` is running."""

    key: Hashable
    flow: Flow[Any]


@dataclass(frozen=True, slots=True)
class Call:
    """Call the app's own function (a completion fallback); the async client awaits what it returns."""

    function: Callable[..., Any]
    args: tuple[Any, ...]


Need = Send | Read | Sleep | Spawn | Call


@dataclass(slots=True)
class Tries:
    """How a request's tries went: whether one whose answer was lost (or a proxy's 502, 504) may have done it."""

    may_have_taken_effect: bool = False


Flow = Generator[Need, Any, T]


def run_sync(flow: Flow[T], satisfy: Callable[[Need], Any]) -> T:
    """Drive ``flow``: do what it asks, give it the result, or throw it the error."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            need = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as stop:
            return cast(T, stop.value)
        value, error = None, None
        try:
            value = satisfy(need)
        except Exception as exc:
            error = exc


async def run_async(flow: Flow[T], satisfy: Callable[[Need], Awaitable[Any]]) -> T:
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            need = flow.send(value) if error is None else flow.throw(error)
        except StopIteration as stop:
            return cast(T, stop.value)
        value, error = None, None
        try:
            value = await satisfy(need)
        except Exception as exc:
            error = exc
        except BaseException:
            flow.close()  # cancelled: the flow cleans up now (a batch in flight goes back to the outbox)
            raise


def error_from_response(response: httpx.Response) -> RegistryError:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text[:500]}
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return error_from_problem(response.status_code, body if isinstance(body, dict) else {}, retry_after=retry_after)


def parsed(response: httpx.Response, parse: Callable[[Any], V]) -> V:
    """``parse`` of the answer's JSON; an answer that is not the registry's (a proxy's page) is an outage."""
    try:
        answer = response.json()
    except ValueError as exc:
        raise ServiceUnavailable(
            f"{response.url} answered something that is not JSON (an HTML page?): is it the registry's API, "
            "and not a proxy's or a sign-in page?"
        ) from exc
    try:
        return parse(answer)
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        raise ServiceUnavailable(f"{response.url} did not answer as the registry does: {exc!r}") from exc


def unreadable(url: httpx.URL, exc: httpx.HTTPError) -> ServiceUnavailable:
    """An answer that broke off or could not be decoded: as good as no answer."""
    return ServiceUnavailable(f"the answer from {url} broke off or could not be read: {exc!r}")


def guarded(url: httpx.URL, parts: Iterator[T]) -> Iterator[T]:
    """``parts`` of a streamed answer (bytes, lines), raising ``ServiceUnavailable`` if the stream breaks off."""
    try:
        yield from parts
    except httpx.HTTPError as exc:
        raise unreadable(url, exc) from exc


def stream_event(event: ServerSentEvent) -> CompletionEvent | None:
    """One event of a completion stream; an ``error`` event raises its typed error."""
    data = json.loads(event.data)
    if event.event == "metadata":
        return metadata_from_json(data)
    if event.event == "delta":
        return TextDelta(data["text"])
    if event.event == "done":
        return done_from_json(data)
    if event.event == "error":
        raise error_from_problem(int(data.get("status") or 502), data)
    return None  # an event this client does not know yet


class BuildRequest(Protocol):
    def __call__(
        self,
        method: str,
        url: str,
        *,
        params: Any = ...,
        json: Any = ...,
        headers: Any = ...,
        timeout: Any = ...,
    ) -> httpx.Request: ...


@dataclass(frozen=True, slots=True)
class CacheKey:
    name: str
    label: str | None  # None when a version is asked for
    version: int | None


@dataclass(frozen=True, slots=True)
class Routed:
    """Where a running experiment sends a unit; ``exposure`` when it counts (hashed, not forced)."""

    assignment: ExperimentAssignment
    variant: Variant | None
    exposure: bool


# --------------------------------------------------------------------------- the core


class Core:
    """State shared by a client's calls (caches, outbox) and the flows that use it."""

    def __init__(
        self,
        *,
        base_url: str,
        build: BuildRequest,
        retries: RetryPolicy,
        cache: CachePolicy,
        batches: BatchPolicy,
        render_limits: RenderLimits | None,
        fallbacks: Mapping[str, FallbackTemplate] | None,
        completion_timeout: httpx.Timeout,
        on_cached: Callable[[], None],
        on_queued: Callable[[], None],
    ) -> None:
        self.base_url = base_url
        self.build = with_trace_context(build)  # the app's traceparent, when it uses OpenTelemetry
        self.retries = retries
        self.cache_policy = cache
        self.render_limits = render_limits
        self.fallbacks = dict(fallbacks or {})
        self.completion_timeout = completion_timeout
        self.on_cached = on_cached
        self.on_queued = on_queued
        self.clock: Callable[[], float] = time.monotonic  # a seam: tests move time instead of waiting
        # The app's clock: it stamps events, and each batch's ``sent_at`` lets the registry correct them for
        # this host's clock being off (a seam: tests set a clock minutes off).
        self.wall_clock: Callable[[], datetime] = _utc_now
        self.sends_clock = True  # False once a registry refused ``sent_at`` as unknown (a version before it)
        self.prompts: TtlCache[CacheKey, Prompt] = TtlCache(
            ttl=cache.ttl, max_entries=cache.max_entries, group=lambda key: key.name, clock=self._now
        )
        self.experiments: TtlCache[str, tuple[Experiment, ...]] = TtlCache(
            ttl=cache.ttl, max_entries=cache.max_entries, group=lambda name: name, clock=self._now
        )
        self.outbox = Outbox(batches)
        self._warned_closed = False
        self.unreachable_until = 0.0  # clock time until which calls with a fallback do not wait for the service
        self.registry_down = False  # the last request for a prompt or experiments found the registry unreachable
        self.send_again_in: float | None = None  # the Retry-After of the last batch refused (429, 503)

    def _now(self) -> float:
        return self.clock()

    # -- requests

    def send(
        self,
        request: httpx.Request,
        *,
        idempotent: bool = True,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        stream: bool = False,
        retry_only_when_told: bool = False,
        rebuild: Callable[[], httpx.Request] | None = None,
        tries: Tries | None = None,
    ) -> Flow[httpx.Response]:
        """Send with retries; the last response is returned whatever its status.

        Connection errors that happened before the request left are always retried;
        others only for idempotent requests, and so are 502 and 504 (a proxy that gave
        up waiting: the service may have done it). A Retry-After longer than the policy
        allows ends the retries at once; with ``retry_only_when_told``, so does its absence
        (a 503 ``backend_not_configured`` says no later try can succeed). ``rebuild`` makes
        the request of each later try (one that says when it is sent); ``tries`` learns
        whether a try before the last may have taken effect.
        """
        if not idempotent:
            retry_statuses = retry_statuses - _MAY_HAVE_RUN
        tries = tries if tries is not None else Tries()
        attempt = 0
        while True:
            if attempt and rebuild is not None:
                request = rebuild()
            try:
                response: httpx.Response = yield Send(request, stream)
            except httpx.TransportError as exc:
                retryable = idempotent or isinstance(exc, _NOT_SENT)
                delay = self.retries.delay(attempt) if retryable else None
                if delay is None:
                    raise ServiceUnavailable(f"cannot reach the registry at {self.base_url}: {exc!r}") from exc
                if not isinstance(exc, _NOT_SENT):
                    tries.may_have_taken_effect = True  # it left; its answer was lost
            except httpx.HTTPError as exc:  # an answer httpx could not read (a body that does not decode)
                raise unreadable(request.url, exc) from exc
            else:
                if response.status_code not in retry_statuses:
                    return response
                if response.status_code in _MAY_HAVE_RUN:
                    tries.may_have_taken_effect = True
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if retry_after is None and retry_only_when_told:
                    return response
                delay = self.retries.delay(attempt, retry_after=retry_after)
                if delay is None:
                    return response
                if stream:
                    with contextlib.suppress(httpx.HTTPError):  # the answer is not used: the request goes again
                        yield Read(response)
            attempt += 1
            yield Sleep(delay)

    def call(
        self, method: str, path: str, *, idempotent: bool | None = None, stream: bool = False, **options: Any
    ) -> Flow[httpx.Response]:
        """Send and raise the typed error of an error answer.

        A DELETE retried after a try that may have deleted it (its answer lost) is done when the
        retry finds nothing to delete: the 404 is its answer, not an error.
        """
        request = self.build(method, path, **options)
        retry_safe = method in ("GET", "HEAD", "PUT", "DELETE") if idempotent is None else idempotent
        tries = Tries()
        response = yield from self.send(request, idempotent=retry_safe, stream=stream, tries=tries)
        if response.status_code == 404 and method == "DELETE" and tries.may_have_taken_effect:
            return response
        if response.status_code >= 400:
            raise (yield from self._error_of(response, stream=stream))
        return response

    @staticmethod
    def _error_of(response: httpx.Response, *, stream: bool) -> Flow[RegistryError]:
        """The typed error of an error answer, its streamed body read first; one that breaks off keeps its status."""
        if stream:
            try:
                yield Read(response)
            except httpx.HTTPError as exc:
                detail = f"HTTP {response.status_code}, and its body broke off: {exc!r}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return error_from_problem(response.status_code, {"detail": detail}, retry_after=retry_after)
        return error_from_response(response)

    # -- prompts

    def get_prompt(
        self,
        name: str,
        *,
        label: Label | None = None,
        version: int | None = None,
        unit: str | None = None,
        fallback: FallbackTemplate | None = None,
    ) -> Flow[Prompt]:
        if label is not None and version is not None:
            raise ValueError("give a label or a version, not both")
        if fallback is None:
            fallback = self.fallbacks.get(name)
        routed = None
        if unit is not None and version is None and label in (None, "production"):
            routed = yield from self._route(name, unit)
        if routed is not None and routed.variant is not None:
            key = CacheKey(name, None, routed.variant.prompt_version)
        else:
            key = CacheKey(name, None if version is not None else label or "production", version)
        prompt = yield from self._prompt(key, fallback)
        if routed is None or prompt.fallback:
            return prompt
        assignment, variant = routed.assignment, routed.variant
        if routed.exposure and variant is not None and unit is not None:
            self._expose(assignment, unit, variant)
        return replace(prompt, experiment=assignment, variant_config=variant.config if variant else None)

    def _expose(self, assignment: ExperimentAssignment, unit: str, variant: Variant) -> None:
        if self.outbox.add_exposure(assignment.key, assignment.phase, unit, variant.key):
            self.on_queued()
        elif self.outbox.closed:
            self._dropped_after_close()

    def _dropped_after_close(self) -> None:
        """Say once that the client is closed: what is tracked now is dropped, not queued for no one to send."""
        if not self._warned_closed:
            self._warned_closed = True
            logger.warning(
                "the client is closed: events and exposures recorded from now on are dropped (see dropped_events)"
            )

    def _prompt(self, key: CacheKey, fallback: FallbackTemplate | None) -> Flow[Prompt]:
        freshness, entry = self.prompts.lookup(key)
        if entry is not None and freshness is Freshness.FRESH:
            return entry.value
        if entry is not None and freshness is Freshness.EXPIRED:
            yield Spawn(("prompt", key), self._quietly(self._load_prompt(key, entry)))
            # Past its lifetime and the registry cannot confirm it: the caller is told (``stale``).
            return replace(entry.value, stale=True) if self.registry_down else entry.value
        if (entry is not None or fallback is not None) and self._unreachable():
            yield Spawn(("prompt", key), self._quietly(self._load_prompt(key, entry)))  # is it back?
            return self._instead(key, entry, fallback)
        try:
            return (yield from self._load_prompt(key, entry))
        except RegistryError as exc:
            # A key over its rate limit is refused for the rest of its minute: for the app that is an outage too.
            if not (is_outage(exc) or isinstance(exc, RateLimited)):
                raise
            self._found_unreachable()
            if entry is None and fallback is None:
                raise
            logger.warning(
                "the registry cannot serve it (%s): serving %r from the cache or its fallback", exc.detail, key.name
            )
            return self._instead(key, entry, fallback)

    def _unreachable(self) -> bool:
        return self.clock() < self.unreachable_until

    def _found_unreachable(self) -> None:
        self.registry_down = True
        self.unreachable_until = self.clock() + self.retries.cooldown

    def _found_reachable(self) -> None:
        self.registry_down = False
        self.unreachable_until = 0.0

    @staticmethod
    def _instead(key: CacheKey, entry: CacheEntry[Prompt] | None, fallback: FallbackTemplate | None) -> Prompt:
        """What serves while the registry cannot answer: the cached copy, else the fallback."""
        if entry is not None:
            return replace(entry.value, stale=True)
        assert fallback is not None
        return fallback_prompt(key.name, fallback)

    def _refresh_prompt(self, key: CacheKey) -> Flow[Prompt]:
        """Revalidate whatever copy is cached when the refresh starts (a 304 if nothing changed)."""
        return (yield from self._load_prompt(key, self.prompts.lookup(key)[1]))

    def _load_prompt(self, key: CacheKey, entry: CacheEntry[Prompt] | None) -> Flow[Prompt]:
        """Fetch or revalidate, noting whether the registry answered (background refreshes included)."""
        try:
            return (yield from self._fetch_prompt(key, entry))
        except RegistryError as exc:
            if is_outage(exc):
                self.registry_down = True  # the cooldown is the caller's to start: it waited for this
            raise

    def _fetch_prompt(self, key: CacheKey, entry: CacheEntry[Prompt] | None) -> Flow[Prompt]:
        token = self.prompts.token()
        params = {"version": key.version} if key.version is not None else {"label": key.label}
        headers = {"If-None-Match": entry.etag} if entry is not None and entry.etag else {}
        request = self.build("GET", f"/v1/prompts/{encode_name(key.name)}", params=params, headers=headers)
        response = yield from self.send(request)
        if response.status_code == 304 and entry is not None:
            self._found_reachable()
            renewed = self.prompts.renew(key, token=token)
            return (renewed or entry).value
        if response.status_code >= 300:
            error = error_from_response(response)
            if isinstance(error, NotFound):
                self.prompts.discard(key)
            raise error
        prompt = self._parsed(response, prompt_from_json)
        self.prompts.store(key, prompt, etag=response.headers.get("ETag"), token=token)
        self._found_reachable()
        self.on_cached()
        return prompt

    # -- local assignment

    def _route(self, name: str, unit: str) -> Flow[Routed | None]:
        """As the service routes: through the running experiment on the prompt (drafts route no one)."""
        experiments = yield from self._experiments(name)
        for experiment in experiments:
            routed = experiment.route(unit)
            if routed is not None:
                assignment, exposure = routed
                variant = experiment.variant(assignment.variant) if assignment.variant is not None else None
                return Routed(assignment, variant, exposure)
        return None

    def _experiments(self, name: str) -> Flow[tuple[Experiment, ...]]:
        freshness, entry = self.experiments.lookup(name)
        if entry is not None and freshness is Freshness.FRESH:
            return entry.value
        if entry is not None and freshness is Freshness.EXPIRED:
            yield Spawn(("experiments", name), self._quietly(self._load_experiments(name)))
            return entry.value
        if self._unreachable():
            return entry.value if entry is not None else ()
        try:
            return (yield from self._load_experiments(name))
        except RegistryError as exc:
            if is_outage(exc):
                self._found_unreachable()
            # Without the experiments the unit gets the production version: the app keeps working.
            logger.warning("cannot read the experiments of prompt %r, so units are not routed: %s", name, exc.detail)
            return entry.value if entry is not None else ()

    def _load_experiments(self, name: str) -> Flow[tuple[Experiment, ...]]:
        token = self.experiments.token()
        found: list[Experiment] = []
        cursor: str | None = None
        while True:
            params = {"prompt": name, "limit": 200, **({"cursor": cursor} if cursor else {})}
            page = self._parsed((yield from self.call("GET", "/v1/experiments", params=params)), _experiments_page)
            found += page[0]
            cursor = page[1]
            if not cursor:
                break
        # As the service: only a running experiment routes renders (a draft's QA units get production too).
        ordered = tuple(sorted((e for e in found if e.status == "running"), key=lambda e: e.key))
        self.experiments.store(name, ordered, etag=None, token=token)
        self.on_cached()
        return ordered

    @staticmethod
    def _parsed(response: httpx.Response, parse: Callable[[Any], V]) -> V:
        return parsed(response, parse)

    def get_experiment(self, key: str) -> Flow[Experiment]:
        response = yield from self.call("GET", f"/v1/experiments/{encode_name(key)}")
        return parsed(response, experiment_from_json)

    # -- completions

    def complete(
        self,
        name: str,
        variables: Mapping[str, Any] | None,
        *,
        stream: bool,
        **fields: Any,
    ) -> Flow[httpx.Response]:
        """The completion's response: its JSON, or (``stream``) an open event stream."""
        body = {"variables": dict(variables or {}), "stream": stream}
        body.update({k: v for k, v in fields.items() if v is not None})
        request = self.build(
            "POST", f"/v1/prompts/{encode_name(name)}/complete", json=body, timeout=self.completion_timeout
        )
        response = yield from self.send(
            request,
            idempotent=False,
            retry_statuses=COMPLETION_RETRY_STATUSES,
            retry_only_when_told=True,
            stream=stream,
        )
        if response.status_code >= 400:
            raise (yield from self._error_of(response, stream=stream))
        return response

    def complete_or_fallback(
        self,
        name: str,
        variables: Mapping[str, Any] | None,
        *,
        fallback: CompletionFallback,
        unit: str | None,
        label: Label | None,
        version: int | None,
        **fields: Any,
    ) -> Flow[Completion]:
        """A whole completion from the registry, or from ``fallback`` when the registry cannot answer.

        Only outages (no connection, 5xx) fall back: the caller's own errors (invalid variables,
        unknown prompt, budget) are raised as they are. Once the registry was found unreachable,
        the fallback answers at once for ``RetryPolicy.cooldown``.
        """
        started = time.perf_counter()
        if self._unreachable():
            error: RegistryError = ServiceUnavailable(f"the registry at {self.base_url} was unreachable moments ago")
        else:
            try:
                flow = self.complete(name, variables, stream=False, unit=unit, label=label, version=version, **fields)
                return parsed((yield from flow), completion_from_json)
            except RegistryError as exc:
                if not is_outage(exc):
                    raise
                if exc.status is None:  # no answer at all, not a 5xx of a registry that answers
                    self._found_unreachable()
                error = exc
        logger.warning("completing %r with the app's fallback: %s", name, error.detail)
        if not isinstance(fallback, CompletionBackend):
            text = yield Call(fallback, (name, dict(variables or {})))
            return fallback_completion(name, str(text), latency_ms=_since(started))
        try:
            prompt = yield from self.get_prompt(name, label=label, version=version, unit=unit)
        except ServiceUnavailable:
            raise error from None  # nothing cached to render, and no fallback template
        rendered = prompt.render(variables, limits=self.render_limits)
        body = {"model": fallback.model, "messages": rendered.to_messages(), **fallback.params}
        body.update({k: v for k, v in fields.items() if v is not None})
        url = f"{fallback.url.rstrip('/')}/v1/chat/completions"
        request = self.build("POST", url, json=body, timeout=self.completion_timeout)
        request.headers.pop("Authorization", None)  # the registry's key is not the backend's
        if fallback.api_key:
            request.headers["Authorization"] = f"Bearer {fallback.api_key}"
        response = yield from self.send(request, idempotent=False, retry_statuses=COMPLETION_RETRY_STATUSES)
        if response.status_code >= 400:
            raise error_from_response(response)
        content, finish_reason, usage = parsed(response, _chat_answer)
        return fallback_completion(
            name, content, rendered=rendered, finish_reason=finish_reason, usage=usage, latency_ms=_since(started)
        )

    # -- events and exposures

    def track(
        self,
        unit: str,
        metric: str,
        value: float,
        *,
        experiment: str | None,
        timestamp: datetime | None,
        idempotency_key: str | None,
    ) -> str:
        if not unit or not metric:
            raise ValueError("unit and metric must not be empty")
        when = timestamp or self.wall_clock()
        if when.tzinfo is None:
            raise ValueError("timestamp needs a time zone")
        key = idempotency_key or uuid.uuid4().hex
        event: dict[str, Any] = {
            "unit": unit,
            "metric": metric,
            "value": float(value),
            "idempotency_key": key,
            "timestamp": when.isoformat(),
        }
        if experiment is not None:
            event["experiment"] = experiment
        if self.outbox.add("events", event):
            self.on_queued()
        elif self.outbox.closed:
            self._dropped_after_close()
        elif (dropped := self.outbox.dropped) & (dropped - 1) == 0:  # the 1st, 2nd, 4th...: an outage is no log flood
            logger.warning(
                "dropped %d events and exposures so far: %d are waiting to be sent",
                dropped,
                self.outbox.policy.max_pending,
            )
        return key

    def send_batches(self) -> Flow[bool]:
        """Send what is queued; False when some of it must wait (it stays queued, to be sent again later)."""
        self.send_again_in = None
        for kind in KINDS:
            while batch := self.outbox.take(kind):
                body = [{k: v for k, v in item.items() if not k.startswith("_")} for item in batch]
                build = self._batch_request(kind, body)
                try:
                    request = build()
                except ValueError:  # a NaN or a lone surrogate: those items are dropped, not the whole batch
                    kept = [item for item, sent in zip(batch, body, strict=True) if _encodable(sent)]
                    self.outbox.rejected += len(batch) - len(kept)
                    logger.error("dropped %d %s that are not valid JSON", len(batch) - len(kept), kind)
                    self.outbox.give_back(kind, kept)
                    continue
                try:
                    response = yield from self.send(
                        request, rebuild=build
                    )  # idempotent: events by key, exposures by unit
                except ServiceUnavailable:
                    self.outbox.give_back(kind, batch)
                    return False
                except GeneratorExit:
                    self.outbox.give_back(kind, batch)  # abandoned (a close that waited long enough): still waiting
                    raise
                if response.status_code >= 500 or response.status_code == 429:
                    self.outbox.give_back(kind, batch)
                    self.send_again_in = parse_retry_after(response.headers.get("Retry-After"))
                    return False
                if response.status_code < 300 and not isinstance(_json_or_none(response), dict):
                    # Not the registry's answer (a proxy's page, a misrouted URL): nothing was taken in.
                    logger.warning("%s did not answer as the registry does; the %s wait", response.url, kind)
                    self.outbox.give_back(kind, batch)
                    return False
                if kind == "events" and self.sends_clock and _refuses_sent_at(response):
                    logger.warning("the registry does not take sent_at (an older version): events go without it")
                    self.sends_clock = False
                    self.outbox.give_back(kind, batch)
                    continue
                if not self._settle(kind, batch, response):
                    return False
        return True

    def _batch_request(self, kind: BatchKind, body: list[dict[str, Any]]) -> Callable[[], httpx.Request]:
        """The request of a batch; events say when they are sent by this host's clock, at each try."""

        def build() -> httpx.Request:
            content: dict[str, Any] = {kind: body}
            if kind == "events" and self.sends_clock:
                content["sent_at"] = self.wall_clock().isoformat()
            return self.build("POST", f"/v1/{kind}", json=content)

        return build

    def _settle(self, kind: BatchKind, batch: list[dict[str, Any]], response: httpx.Response) -> bool:
        """Account for a batch the service answered; False when part of it waits to be sent again later."""
        outbox = self.outbox
        if response.status_code < 300:
            items = response.json().get("items") if kind == "events" else None
            rejected = [item for item in items or [] if item.get("status") == "rejected"]
            for item in rejected:
                logger.warning("the registry rejected an event: %s", item.get("errors"))
            outbox.rejected += len(rejected)
            outbox.sent += len(batch) - len(rejected)
            return True
        error = error_from_response(response)
        invalid = _invalid_indexes(kind, error) if response.status_code == 422 else {}
        if not invalid:
            outbox.rejected += len(batch)
            logger.error("the registry refused a batch of %d %s: %s", len(batch), kind, error.detail)
            return True
        # Exposures are all or nothing: the valid ones go again. An experiment this client saw running
        # may not have reached the replica that answered yet, so those wait and go again a few times.
        again, dropped = [], 0
        for index, item in enumerate(batch):
            problem = invalid.get(index)
            attempts = int(item.get("_attempts", 0))
            if problem is None:
                again.append(item)
            elif "not a running experiment" in problem and attempts < _EXPOSURE_ATTEMPTS:
                again.append({**item, "_attempts": attempts + 1})
            else:
                dropped += 1
                logger.warning("the registry rejected an exposure: %s", problem)
        outbox.give_back(kind, again)
        outbox.rejected += dropped
        return len(again) == len(batch) - len(invalid)

    # -- the change feed

    def feed_request(self) -> httpx.Request:
        timeout = httpx.Timeout(self.cache_policy.feed_read_timeout, connect=5.0)
        return self.build("GET", "/v1/changes", headers={"Accept": "text/event-stream"}, timeout=timeout)

    def feed_reconnects(self) -> FeedReconnects:
        return FeedReconnects(self.cache_policy, self._now)

    def on_change(self, event: ServerSentEvent) -> list[Spawn]:
        """Apply one change-feed event; returns the refreshes to start at once.

        ``hello`` (every connect and reconnect) and ``reset`` mean changes may have been
        missed: every copy is revalidated before it is served again.
        """
        prompts: list[CacheKey] = []
        experiments: list[str] = []
        if event.event in ("hello", "reset"):
            prompts, experiments = self.prompts.invalidate_all(), self.experiments.invalidate_all()
        elif event.event == "change":
            change = json.loads(event.data)
            if change.get("kind") == "prompt":
                prompts = self.prompts.invalidate(str(change.get("name")))
            elif change.get("kind") == "experiment":
                experiments = self.experiments.invalidate_all()  # the change names the experiment, not its prompt
        return [Spawn(("prompt", key), self._quietly(self._refresh_prompt(key))) for key in prompts] + [
            Spawn(("experiments", name), self._quietly(self._load_experiments(name))) for name in experiments
        ]

    @staticmethod
    def _quietly(flow: Flow[V]) -> Flow[V | None]:
        try:
            return (yield from flow)
        except RegistryError as exc:
            logger.debug("background refresh failed: %s", exc.detail)
            return None


class FeedReconnects:
    """When to reconnect the change feed after it dropped.

    Quickly (within ``feed_reconnect_delay``, jittered so that clients do not all come back at
    once) while the registry was up recently: a restart or a short outage then delays a
    promotion by about a second. Only once it has been gone for ``feed_fast_reconnects_for`` do
    the pauses double, up to ``feed_max_backoff``; a registry that answers but refuses the feed
    (a key without the scope) gets the long pauses at once, and never one shorter than the
    ``Retry-After`` it answered with (a key holding too many feeds). A key it no longer knows (401:
    revoked or expired, which also ends a feed that is open) never becomes valid again, so the
    feed is not reconnected at all.
    """

    def __init__(self, policy: CachePolicy, clock: Callable[[], float], *, rand: Callable[[], float] = random.random):
        self._policy = policy
        self._clock = clock
        self._rand = rand
        self._down_since: float | None = None
        self._slow_pauses = 0

    def connected(self) -> None:
        self._down_since = None
        self._slow_pauses = 0

    def after_drop(self, error: Exception | None) -> float | None:
        """Seconds to wait before the next try, None for none; ``error`` is why the feed dropped, if it failed."""
        if isinstance(error, Unauthorized):
            return None
        policy, now = self._policy, self._clock()
        if self._down_since is None:
            self._down_since = now
        if isinstance(error, RegistryError) and not is_outage(error):
            self._down_since = now - policy.feed_fast_reconnects_for
        if now - self._down_since < policy.feed_fast_reconnects_for:
            ceiling = policy.feed_reconnect_delay
        else:
            self._slow_pauses += 1
            ceiling = backoff(policy.feed_reconnect_delay, self._slow_pauses, policy.feed_max_backoff)
        pause = ceiling / 2 + self._rand() * ceiling / 2
        if isinstance(error, RegistryError) and error.retry_after is not None:  # too many feeds on the key: 429
            return max(pause, error.retry_after)
        return pause


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _refuses_sent_at(response: httpx.Response) -> bool:
    """Whether a registry that predates ``sent_at`` refused the batch for it (an unknown field)."""
    if response.status_code not in (400, 422):
        return False
    answer = _json_or_none(response)
    errors = answer.get("errors") if isinstance(answer, dict) else None
    return any(
        isinstance(e, dict) and e.get("field") == "sent_at" and "unknown field" in str(e.get("message"))
        for e in errors or []
    )


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _chat_answer(answer: Any) -> tuple[str, str | None, Usage]:
    """The text, finish reason and usage of an OpenAI-style chat completion."""
    choice, usage = answer["choices"][0], answer.get("usage") or {}
    tokens = Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), usage.get("total_tokens", 0))
    return str(choice["message"].get("content") or ""), choice.get("finish_reason"), tokens


def _experiments_page(page: Any) -> tuple[list[Experiment], str | None]:
    return [experiment_from_json(item) for item in page["items"]], page.get("next_cursor")


def _json_or_none(response: httpx.Response) -> Any:
    """The answer's JSON, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _encodable(item: Mapping[str, Any]) -> bool:
    """Whether ``item`` can be sent as JSON (httpx refuses NaN and infinities, UTF-8 lone surrogates)."""
    try:
        json.dumps(item, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except ValueError:
        return False
    return True


def _invalid_indexes(kind: BatchKind, error: RegistryError) -> dict[int, str]:
    """The items a 422 names (``exposures[3].experiment``), with what is wrong with each."""
    prefix = f"{kind}["
    invalid: dict[int, str] = {}
    for problem in error.errors:
        where = str(problem.get("field", ""))
        if where.startswith(prefix) and "]" in where:
            index = where[len(prefix) : where.index("]")]
            if index.isdigit():
                invalid[int(index)] = str(problem.get("message", ""))
    return invalid
