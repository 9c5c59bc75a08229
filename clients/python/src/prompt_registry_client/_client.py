"""The synchronous client: ``httpx.Client``, and threads for the work it does in the background."""

from __future__ import annotations

import atexit
import contextlib
import inspect
import json
import logging
import socket
import threading
import time
import weakref
from collections.abc import Hashable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx

from prompt_registry_client._base import BaseClient, ClientOptions, register_at_exit
from prompt_registry_client._config import DEFAULT_TIMEOUT, BatchPolicy, CachePolicy, RetryPolicy
from prompt_registry_client._core import (
    Call,
    Flow,
    Label,
    Need,
    Read,
    Send,
    Sleep,
    Spawn,
    backoff,
    encode_name,
    error_from_response,
    guarded,
    parsed,
    run_sync,
)
from prompt_registry_client._errors import NotFound, ServiceUnavailable
from prompt_registry_client._management import (
    UNSET,
    enabled_param,
    eval_run_body,
    gate_body,
    json_object,
    promote_body,
    webhook_body,
)
from prompt_registry_client._models import (
    Completion,
    CompletionFallback,
    Experiment,
    ExperimentResults,
    FallbackTemplate,
    Prompt,
    RenderedPrompt,
    completion_from_json,
    results_from_json,
)
from prompt_registry_client._sse import SSEParser
from prompt_registry_client._streams import CompletionStream
from prompt_registry_client.templating import RenderLimits

T = TypeVar("T")
Resource = Literal["prompts", "configs"]
logger = logging.getLogger("prompt_registry_client")


def satisfy_sync(http: httpx.Client, need: Need) -> Any:
    """Do what a flow asks with a sync httpx client (background work excepted)."""
    if isinstance(need, Send):
        return http.send(need.request, stream=need.stream)
    if isinstance(need, Read):
        try:
            need.response.read()
        finally:
            need.response.close()
        return need.response
    if isinstance(need, Sleep):
        time.sleep(need.seconds)
        return None
    if isinstance(need, Call):
        result = need.function(*need.args)
        if inspect.isawaitable(result):
            raise TypeError("the sync client's fallback must return the text, not a coroutine")
        return result
    need.flow.close()  # no background here: skip it
    return None


def _wake(sock: socket.socket) -> None:
    """Wake the thread blocked on ``sock`` (waiting for an answer, reading one): closing a socket does not,
    shutting it down does; one already closed is left as it is."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _socket_of(stream: Any) -> socket.socket | None:
    """The socket under an httpcore network stream, if it has one (an app's own transport may not)."""
    sock = stream.get_extra_info("socket") if hasattr(stream, "get_extra_info") else None
    return sock if isinstance(sock, socket.socket) else None


class RegistryClient(BaseClient):
    """The registry from Python, built so that it is never the reason an app fails.

    Prompts are cached locally (``CachePolicy``): a fresh copy is served without a
    request, an older one at once while it revalidates in the background, and the
    change feed makes promotions and rollbacks arrive within moments. When the service
    cannot be reached the cached copy, or else the caller's fallback template, is
    served. Rendering and experiment assignment happen locally, with the service's
    own code. ``base_url`` and ``api_key`` default to REGISTRY_URL and REGISTRY_API_KEY.

    Example::

        from prompt_registry_client import RegistryClient

        with RegistryClient("http://registry:8000", api_key="prk_...") as registry:
            rendered = registry.render("support/summarize", {"ticket": "..."}, unit="user-42")
            reply = my_llm(rendered.to_messages())
            registry.track("user-42", "thumbs_up")

    The client is thread-safe; make one per process and share it.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        completion_timeout: float | httpx.Timeout = 120.0,
        retries: RetryPolicy | None = None,
        cache: CachePolicy | None = None,
        batches: BatchPolicy | None = None,
        fallbacks: Mapping[str, FallbackTemplate] | None = None,
        render_limits: RenderLimits | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._options = options = ClientOptions(
            base_url,
            api_key,
            timeout=timeout,
            completion_timeout=completion_timeout,
            retries=retries,
            cache=cache,
            batches=batches,
            fallbacks=fallbacks,
            render_limits=render_limits,
            headers=headers,
        )
        self._http = httpx.Client(
            base_url=options.base_url, headers=options.headers, timeout=options.timeout, transport=transport
        )
        self._core = options.core(self._build, on_cached=self._watch, on_queued=self._queued)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._background: set[Hashable] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._refreshes: set[Future[None]] = set()
        self._sender: threading.Thread | None = None
        self._send_now = threading.Event()
        self._send_lock = threading.Lock()
        self._close_deadline = 0.0
        self._watcher: threading.Thread | None = None
        self._feed_socket: socket.socket | None = None  # the feed's connection, to wake its thread at close
        # Every connection the client made (httpcore's connect trace), and whether close() cut them off: a thread
        # waiting on the registry is woken by its socket being shut, not by a timeout, so none outlives close().
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._cut_off = threading.Event()
        self._at_exit = register_at_exit(self, RegistryClient.close)

    # -- prompts

    def get_prompt(
        self,
        name: str,
        *,
        label: Label | None = None,
        version: int | None = None,
        unit: str | None = None,
        fallback: FallbackTemplate | None = None,
    ) -> Prompt:
        """The production version of ``name`` (or ``label``, or ``version``), from the cache when it can be.

        With ``unit``, a running experiment on the prompt routes the unit to its variant's
        version, assigned locally exactly as the service assigns (the exposure is reported in
        the background). ``fallback`` (text, or chat messages) is served when the service
        cannot be reached and nothing is cached; without one that raises ``ServiceUnavailable``.

        Example::

            prompt = registry.get_prompt("greet", unit="user-42", fallback="Hello {{ name }}!")
            prompt.render({"name": "Ada"}).text
        """
        return self._run(self._core.get_prompt(name, label=label, version=version, unit=unit, fallback=fallback))

    def render(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        *,
        unit: str | None = None,
        label: Label | None = None,
        version: int | None = None,
        fallback: FallbackTemplate | None = None,
    ) -> RenderedPrompt:
        """``get_prompt(...)`` rendered locally with ``variables``: no request when the prompt is cached.

        Raises ``VariablesInvalid`` (every problem in ``errors``) or ``RenderFailed``, as the service would.

        Example::

            rendered = registry.render("support/summarize", {"ticket": text, "max_words": 20}, unit=user_id)
            rendered.messages, rendered.version, rendered.experiment
        """
        prompt = self.get_prompt(name, label=label, version=version, unit=unit, fallback=fallback)
        return prompt.render(variables, limits=self._options.render_limits)

    # -- completions

    @overload
    def complete(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        *,
        unit: str | None = None,
        label: Label | None = None,
        version: int | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        user: str | None = None,
        stream: Literal[False] = False,
        fallback: CompletionFallback | None = None,
    ) -> Completion: ...

    @overload
    def complete(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        *,
        unit: str | None = None,
        label: Label | None = None,
        version: int | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        user: str | None = None,
        stream: Literal[True],
        fallback: None = None,
    ) -> CompletionStream: ...

    def complete(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        *,
        unit: str | None = None,
        label: Label | None = None,
        version: int | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        user: str | None = None,
        stream: bool = False,
        fallback: CompletionFallback | None = None,
    ) -> Completion | CompletionStream:
        """Render ``name`` on the service and run it with its model config.

        With ``stream=True`` the answer is a ``CompletionStream`` of typed events. Only
        refusals that prove nothing ran (429, 503 with ``Retry-After``, no connection)
        are retried. ``fallback`` answers a whole completion when the registry cannot (no
        connection, 5xx), with ``fallback_used`` set: a function of ``(name, variables)``
        returning the text, or a ``CompletionBackend`` of the app's own, sent the prompt
        rendered locally from the cache. Without one, that raises ``ServiceUnavailable``.

        Example::

            completion = registry.complete("greet", {"name": "Ada"}, unit="user-42")
            completion.text, completion.usage.total_tokens, completion.cost
            backend = CompletionBackend(url="http://vllm:8000", model="Qwen/Qwen2.5-0.5B-Instruct")
            registry.complete("greet", {"name": "Ada"}, fallback=backend).fallback_used
        """
        if label is not None and version is not None:
            raise ValueError("give a label or a version, not both")
        if fallback is not None:
            if stream:
                raise ValueError("a fallback answers whole completions: use it with stream=False")
            options = {"max_tokens": max_tokens, "seed": seed, "user": user}
            return self._run(
                self._core.complete_or_fallback(
                    name, variables, fallback=fallback, unit=unit, label=label, version=version, **options
                )
            )
        flow = self._core.complete(
            name,
            variables,
            stream=stream,
            unit=unit,
            label=label,
            version=version,
            max_tokens=max_tokens,
            seed=seed,
            user=user,
        )
        response = self._run(flow)
        if stream:
            return CompletionStream(response)
        return parsed(response, completion_from_json)

    # -- experiments

    def get_experiment(self, key: str) -> Experiment:
        """An experiment's definition; ``.assign(unit)`` gives the variant the service would."""
        return self._run(self._core.get_experiment(key))

    def experiment_results(self, key: str, *, phase: int | None = None) -> ExperimentResults:
        """Results per metric and variant (the key needs the ``analyze`` scope); ``.to_pandas()`` for a table."""
        params = {"phase": phase} if phase is not None else {}
        response = self._run(self._core.call("GET", f"/v1/experiments/{encode_name(key)}/results", params=params))
        return parsed(response, results_from_json)

    # -- background work

    def flush(self) -> bool:
        """Send every queued event and exposure now; False if the service could not take them all."""
        with self._send_lock:
            return self._run(self._core.send_batches()) and self._core.outbox.pending == 0

    def close(self) -> None:
        """Send what is queued (for up to ``BatchPolicy.close_timeout``), stop the background work, disconnect.

        What still waits on the registry then (a batch or a refresh it does not answer, the change feed) is
        woken at once, not waited out, and no thread of the client's is left running when this returns.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_deadline = time.monotonic() + self._options.batches.close_timeout
        self._core.outbox.close()
        self._closing.set()
        with self._lock:
            feed_socket = self._feed_socket
        if feed_socket is not None:
            _wake(feed_socket)
        sender = self._sender
        if sender is not None:
            self._send_now.set()
            sender.join(self._until_close_deadline())
            if sender.is_alive():  # a batch in flight to a registry that does not answer: not waited out
                self._cut_off_background()
                sender.join()
        elif self._core.outbox.pending:
            try:
                self.flush()
            except Exception as exc:
                logger.error("could not send %d events before closing: %s", self._core.outbox.pending, exc)
        if self._executor is not None:
            # A refresh waiting on a registry that does not answer is not waited out (its tries' timeouts):
            # once the close timeout has passed it is cut off, and ends at once.
            self._executor.shutdown(wait=False, cancel_futures=True)
            with self._lock:
                running = list(self._refreshes)
            wait(running, timeout=self._until_close_deadline())
        # Whatever still waits on the registry is cut off now: the feed's answer on a pooled connection (its
        # socket unknown to it until the answer comes), a refresh past the close timeout. The threads are then
        # joined: none is left running on a closed client.
        self._cut_off_background()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._watcher is not None:
            self._watcher.join()
        self._http.close()
        atexit.unregister(self._at_exit)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, flow: Flow[T]) -> T:
        return run_sync(flow, self._satisfy)

    def _satisfy(self, need: Need) -> Any:
        if isinstance(need, Spawn):
            self._spawn(need)
            return None
        if isinstance(need, Sleep):  # a retry's pause ends when close() cuts off the work waiting on it
            self._cut_off.wait(need.seconds)
            return None
        if isinstance(need, Send) and self._cut_off.is_set() and not self._http.is_closed:
            raise httpx.ConnectError("the client is closing: the request was not sent", request=need.request)
        return satisfy_sync(self._http, need)

    def _build(self, method: str, url: str, **options: Any) -> httpx.Request:
        """A request whose connection, if it makes one, is known to close() (see ``_trace``)."""
        request = self._http.build_request(method, url, **options)
        request.extensions["trace"] = self._trace
        return request

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace of a request: the socket of each connection, as soon as it is made (or made TLS)."""
        if not event.endswith(".complete"):
            return
        sock = _socket_of(info.get("return_value"))
        if sock is None:
            return
        with self._lock:
            self._sockets.add(sock)
            cut_off = self._cut_off.is_set()
        if cut_off:  # made after close() cut the others off
            _wake(sock)

    def _until_close_deadline(self) -> float:
        return max(self._close_deadline - time.monotonic(), 0.0)

    def _cut_off_background(self) -> None:
        """Wake every thread waiting on the registry: shut the client's connections, end the retries' pauses."""
        with self._lock:
            self._cut_off.set()
            sockets = list(self._sockets)
        for sock in sockets:
            _wake(sock)
        self._send_now.set()  # the sender's pause before its next try

    def _spawn(self, need: Spawn) -> None:
        with self._lock:
            if self._closed or need.key in self._background:
                need.flow.close()
                return
            self._background.add(need.key)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prompt-registry-refresh")
            refresh = self._executor.submit(self._run_in_background, need)
            self._refreshes.add(refresh)
            refresh.add_done_callback(self._refreshes.discard)

    def _run_in_background(self, need: Spawn) -> None:
        try:
            self._run(need.flow)
        except Exception as exc:
            logger.debug("background refresh failed: %r", exc)
        finally:
            with self._lock:
                self._background.discard(need.key)

    def _queued(self) -> None:
        with self._lock:
            if self._sender is None and not self._closed:
                self._sender = threading.Thread(target=self._send_loop, name="prompt-registry-events", daemon=True)
                self._sender.start()
        if self._core.outbox.full_batch_waiting():
            self._send_now.set()

    def _send_loop(self) -> None:
        failures = 0
        policy = self._options.batches
        while True:
            wait = policy.flush_interval if failures == 0 else backoff(policy.flush_interval, failures, 30.0)
            if failures and self._core.send_again_in is not None:  # the registry said when (a rate limit's minute)
                wait = max(wait, self._core.send_again_in)
            if self._closing.is_set():
                wait = min(wait, 0.2)
            self._send_now.wait(wait)
            self._send_now.clear()
            closing = self._closing.is_set()
            try:
                sent = self.flush()
            except Exception as exc:
                logger.warning("could not send events: %r", exc)
                sent = False
            failures = 0 if sent else failures + 1
            if closing and (sent or self._cut_off.is_set() or time.monotonic() > self._close_deadline):
                if not sent:
                    logger.error("closing with %d events not sent", self._core.outbox.pending)
                return

    def _watch(self) -> None:
        if not self._options.cache.watch_changes:
            return
        with self._lock:
            if self._watcher is not None or self._closed:
                return
            self._watcher = threading.Thread(target=self._watch_loop, name="prompt-registry-changes", daemon=True)
            self._watcher.start()

    def _watch_loop(self) -> None:
        reconnects = self._core.feed_reconnects()
        while not self._closing.is_set():
            error: Exception | None = None
            try:
                for connected in self._follow_changes():  # each connect revalidates every cached copy
                    if connected:
                        reconnects.connected()
            except Exception as exc:
                logger.debug("the change feed dropped: %r", exc)
                error = exc
            pause = reconnects.after_drop(error)
            if pause is None:
                logger.error("the change feed stops: the registry refused the client's key (%r)", error)
                return
            if self._pause(pause):
                return

    def _pause(self, seconds: float) -> bool:
        """Wait before reconnecting the feed; True when the client closes meanwhile (a seam for tests)."""
        return self._closing.wait(seconds)

    def _hold_feed(self, stream: Any) -> None:
        """Keep the feed's socket for close() to wake; shut it at once if close() came first."""
        sock = _socket_of(stream)
        if sock is None:
            return
        with self._lock:
            self._feed_socket = sock
            closing = self._closing.is_set()
        if closing:  # close() looked for the socket before it was here
            _wake(sock)

    def _feed_trace(self, event: str, info: dict[str, Any]) -> None:
        """The feed's connection, as soon as it is made: close() wakes the feed at once, before its answer."""
        self._trace(event, info)
        if event.endswith(".complete"):
            self._hold_feed(info.get("return_value"))

    def _follow_changes(self) -> Iterator[bool]:
        if self._closing.is_set():
            return
        request = self._core.feed_request()
        request.extensions["trace"] = self._feed_trace
        try:
            response = self._http.send(request, stream=True)
            try:
                self._hold_feed(response.extensions.get("network_stream"))  # a pooled connection: known only now
                if self._closing.is_set():
                    return
                if response.status_code != 200:
                    response.read()
                    raise error_from_response(response)
                parser = SSEParser()
                for line in response.iter_lines():
                    event = parser.feed(line)
                    if event is None:
                        continue
                    for spawn in self._core.on_change(event):
                        self._spawn(spawn)
                    yield event.event == "hello"
            finally:
                response.close()
        finally:
            with self._lock:
                self._feed_socket = None

    # -- management (the API's JSON, for tools such as the ``registry`` command)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request (retried as the policy says); error answers raise the matching ``RegistryError``.

        A DELETE whose retry finds nothing to delete, after a try whose answer was lost, is done: its answer is
        that 404. Requests other than GET, HEAD, PUT and DELETE are not sent again once they may have arrived.
        """
        return self._run(self._core.call(method, path, **kwargs))

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return parsed(self.request(method, path, **kwargs), json_object)

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            query = {k: v for k, v in {**params, "cursor": cursor}.items() if v is not None}
            page = self._json("GET", path, params=query)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def list_resources(
        self, resource: Resource = "prompts", *, prefix: str | None = None, tag: str | None = None
    ) -> Iterator[dict[str, Any]]:
        return self._pages(f"/v1/{resource}", {"prefix": prefix, "tag": tag, "limit": 200})

    def list_versions(
        self, name: str, resource: Resource = "prompts", *, state: str | None = None
    ) -> Iterator[dict[str, Any]]:
        return self._pages(f"/v1/{resource}/{encode_name(name)}/versions", {"state": state, "limit": 200})

    def current_version(self, name: str, state: str, resource: Resource = "prompts") -> int | None:
        """The version holding ``state`` (staging or production), or None."""
        path = f"/v1/{resource}/{encode_name(name)}/versions"
        page = self._json("GET", path, params={"state": state, "limit": 1})  # one page, not a generator left open
        return int(page["items"][0]["version"]) if page["items"] else None

    def promote(
        self,
        name: str,
        version: int,
        to: str,
        resource: Resource = "prompts",
        *,
        expected_current: int | None = UNSET,
        reason: str | None = None,
        override_gate: str | None = None,
    ) -> dict[str, Any]:
        """Move ``version`` to ``to``. Without ``expected_current``, the holder is read first.

        A gated state refuses a version without evaluation evidence (``ValidationFailed``, type
        ``gate_failed``, its ``body`` holding ``failures`` and ``evidence``); an admin may pass
        ``override_gate``, a reason kept in the history and the audit log.
        """
        if expected_current is UNSET and to in ("staging", "production"):
            expected_current = self.current_version(name, to, resource)
        body = promote_body(to, expected_current, reason, override_gate)
        return self._json("POST", f"/v1/{resource}/{encode_name(name)}/versions/{version}/promote", json=body)

    def rollback(
        self, name: str, reason: str, version: int | None = None, resource: Resource = "prompts"
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason, "version": version}
        return self._json("POST", f"/v1/{resource}/{encode_name(name)}/rollback", json=body)

    def history(self, name: str, resource: Resource = "prompts") -> Iterator[dict[str, Any]]:
        return self._pages(f"/v1/{resource}/{encode_name(name)}/history", {"limit": 200})

    def diff(self, name: str, from_version: int, to_version: int, resource: Resource = "prompts") -> dict[str, Any]:
        params = {"from": from_version, "to": to_version}
        return self._json("GET", f"/v1/{resource}/{encode_name(name)}/diff", params=params)

    def create_experiment(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Create an experiment (a draft) from the body ``POST /v1/experiments`` takes."""
        return self._json("POST", "/v1/experiments", json=definition)

    def list_experiments(self, *, status: str | None = None, prompt: str | None = None) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/experiments", {"status": status, "prompt": prompt, "limit": 200})

    def update_experiment(self, key: str, changes: dict[str, Any]) -> dict[str, Any]:
        return self._json("PATCH", f"/v1/experiments/{encode_name(key)}", json=changes)

    def start_experiment(self, key: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/experiments/{encode_name(key)}/start")

    def stop_experiment(self, key: str, *, winner: str | None = None, reason: str | None = None) -> dict[str, Any]:
        """Stop; with ``winner``, that variant's version becomes production."""
        body = {k: v for k, v in {"winner": winner, "reason": reason}.items() if v is not None}
        return self._json("POST", f"/v1/experiments/{encode_name(key)}/stop", json=body)

    def record_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Record outcome events now (up to 1000); each item of the answer says accepted, duplicate or rejected.

        Retried after a lost answer: each event's ``idempotency_key`` keeps it from counting twice (the
        answer then says duplicate for those the lost try recorded).
        """
        return self._json("POST", "/v1/events", json={"events": events}, idempotent=True)

    # -- more management: what the ``registry`` command offers product people and analysts

    def resolve(
        self, name: str, resource: Resource = "prompts", *, label: str | None = None, version: int | None = None
    ) -> dict[str, Any]:
        """The version that ``label`` (default production) or ``version`` names, with the resource's labels.

        Unlike ``get_prompt`` this always asks the service and caches nothing.
        """
        params = {k: v for k, v in {"label": label, "version": version}.items() if v is not None}
        return self._json("GET", f"/v1/{resource}/{encode_name(name)}", params=params)

    def create_resource(
        self, name: str, resource: Resource = "prompts", *, description: str = "", tags: list[str] | None = None
    ) -> dict[str, Any]:
        body = {"name": name, "description": description, "tags": tags or []}
        return self._json("POST", f"/v1/{resource}", json=body)

    def get_version(self, name: str, version: int, resource: Resource = "prompts") -> dict[str, Any]:
        return self._json("GET", f"/v1/{resource}/{encode_name(name)}/versions/{version}")

    def create_version(self, name: str, body: Mapping[str, Any], resource: Resource = "prompts") -> dict[str, Any]:
        """A new version from the body ``POST /v1/{resource}/{name}/versions`` takes (the newest, if identical)."""
        return self._json("POST", f"/v1/{resource}/{encode_name(name)}/versions", json=dict(body))

    def render_on_service(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        *,
        label: str | None = None,
        version: int | None = None,
        unit: str | None = None,
    ) -> dict[str, Any]:
        """The service's render (``POST .../render``): the text or messages and exactly which versions made them."""
        body = {"variables": dict(variables or {}), "label": label, "version": version, "unit": unit}
        return self._json("POST", f"/v1/prompts/{encode_name(name)}/render", json=body)

    def list_metrics(self) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/metrics", {"limit": 200})

    def create_metric(self, definition: Mapping[str, Any]) -> dict[str, Any]:
        """Define a metric from the body ``POST /v1/metrics`` takes (``key``, ``kind``, ...)."""
        return self._json("POST", "/v1/metrics", json=dict(definition))

    def usage(self, **params: Any) -> dict[str, Any]:
        """Completion usage and cost (``GET /v1/usage``; ``group_by`` may be a list), needs the ``analyze`` scope."""
        query = {k: v for k, v in params.items() if v is not None}
        return self._json("GET", "/v1/usage", params=query)

    def audit(
        self, *, actor: str | None = None, resource_type: str | None = None, resource_name: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The audit log, newest first (admin scope)."""
        params = {"actor": actor, "resource_type": resource_type, "resource_name": resource_name, "limit": 200}
        return self._pages("/v1/audit", params)

    def list_webhooks(self, *, enabled: bool | None = None) -> Iterator[dict[str, Any]]:
        """Webhooks (admin scope); ``enabled``: only enabled (True) or disabled (False) ones.

        Each says whether it is ``enabled``, and if not since when and why (``disabled_at``,
        ``disabled_reason``), and how it has fared lately (``consecutive_failures``, ``failing_since``).
        """
        params = {"enabled": enabled_param(enabled), "limit": 200}
        return self._pages("/v1/webhooks", params)

    def create_webhook(self, url: str, events: list[str], *, description: str = "") -> dict[str, Any]:
        """Subscribe ``url`` to ``events`` (exact types, ``prompt.*`` or ``*``); admin scope.

        The answer is ``{"secret": "whsec_...", "webhook": {...}}``: the signing secret is in it only, never
        shown again, so keep it now (receivers check deliveries with it). A URL or event pattern the service
        refuses raises ``ValidationFailed``, its ``errors`` naming the field. Not retried: a retry after a lost
        answer would subscribe the URL twice.
        """
        return self._json("POST", "/v1/webhooks", json=webhook_body(url, events, description))

    def get_webhook(self, webhook_id: int) -> dict[str, Any]:
        return self._json("GET", f"/v1/webhooks/{webhook_id}")

    def delete_webhook(self, webhook_id: int) -> None:
        """Delete the webhook and its delivery log; ``NotFound`` when no webhook has this id.

        Retried like every delete: a retry that finds it gone after a try whose answer was lost is done.
        """
        self.request("DELETE", f"/v1/webhooks/{webhook_id}")

    def ping_webhook(self, webhook_id: int) -> None:
        """Queue a signed ``ping`` delivery to the webhook, to check the receiver and its signature check.

        ``Conflict`` (type ``webhook_disabled``) while the webhook is disabled: nothing is queued.
        """
        self.request("POST", f"/v1/webhooks/{webhook_id}/ping")

    def enable_webhook(self, webhook_id: int) -> dict[str, Any]:
        """Deliver events to the webhook again from now on; deliveries that died while it was disabled stay dead.

        Retried after a lost answer: the same state again changes nothing.
        """
        return self._json("PATCH", f"/v1/webhooks/{webhook_id}", json={"enabled": True}, idempotent=True)

    def disable_webhook(self, webhook_id: int) -> dict[str, Any]:
        """Send the webhook nothing more; its waiting deliveries are marked dead (redeliver them later).

        Retried after a lost answer: the same state again changes nothing.
        """
        return self._json("PATCH", f"/v1/webhooks/{webhook_id}", json={"enabled": False}, idempotent=True)

    def webhook_deliveries(self, webhook_id: int, *, status: str | None = None) -> Iterator[dict[str, Any]]:
        """A webhook's delivery log, newest first."""
        return self._pages(f"/v1/webhooks/{webhook_id}/deliveries", {"status": status, "limit": 200})

    def redeliver(self, webhook_id: int, delivery_id: int) -> dict[str, Any]:
        """Send a delivery again from its first attempt, with the same event id and body."""
        return self._json("POST", f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver")

    def get_experiment_definition(self, key: str) -> dict[str, Any]:
        """The experiment as the API returns it (``get_experiment`` gives a typed one that can assign)."""
        return self._json("GET", f"/v1/experiments/{encode_name(key)}")

    @contextlib.contextmanager
    def export_experiment(
        self, key: str, *, format: Literal["csv", "parquet"] = "csv", phase: int | None = None
    ) -> Iterator[Iterator[bytes]]:
        """The per-unit rows of a phase as CSV or Parquet bytes, streamed (``analyze`` scope).

        Example::

            with registry.export_experiment("greet-test") as chunks, open("units.csv", "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
        """
        params: dict[str, Any] = {"format": format}
        if phase is not None:
            params["phase"] = phase
        path = f"/v1/experiments/{encode_name(key)}/export"
        response = self._run(self._core.call("GET", path, params=params, stream=True))
        try:
            yield guarded(response.url, response.iter_bytes())
        finally:
            response.close()

    # -- evaluations: datasets, runs, gates

    def list_datasets(self, *, prefix: str | None = None) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/evals/datasets", {"prefix": prefix, "limit": 200})

    def get_dataset(self, name: str) -> dict[str, Any]:
        """The dataset and its latest version number."""
        return self._json("GET", f"/v1/evals/datasets/{encode_name(name)}")

    def create_dataset(self, name: str, *, description: str = "") -> dict[str, Any]:
        return self._json("POST", "/v1/evals/datasets", json={"name": name, "description": description})

    def list_dataset_versions(self, name: str) -> Iterator[dict[str, Any]]:
        """Versions newest first, with item counts and digests."""
        return self._pages(f"/v1/evals/datasets/{encode_name(name)}/versions", {"limit": 200})

    def get_dataset_version(self, name: str, version: int | None = None) -> dict[str, Any]:
        """A version (``None``: the latest)."""
        return self._json("GET", f"/v1/evals/datasets/{encode_name(name)}/versions/{version or 'latest'}")

    def push_dataset(
        self,
        name: str,
        content: bytes,
        *,
        format: Literal["jsonl", "csv"] = "jsonl",
        commit_message: str = "",
        create: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """Upload JSONL or CSV items as a new version of ``name``; returns (the version, whether it is new).

        The same items as the newest version create nothing (the service answers with that version),
        so pushing a file again is safe. With ``create``, a dataset that does not exist yet is created.

        Example::

            version, created = registry.push_dataset("support-cases", Path("cases.jsonl").read_bytes())
        """
        path = f"/v1/evals/datasets/{encode_name(name)}/versions"
        media = "text/csv" if format == "csv" else "application/x-ndjson"
        send = {"content": content, "headers": {"Content-Type": media}, "params": {"commit_message": commit_message}}
        try:
            response = self.request("POST", path, **send)
        except NotFound as exc:
            if not create or exc.type != "dataset_not_found":
                raise
            self.create_dataset(name)
            response = self.request("POST", path, **send)
        return parsed(response, json_object), response.status_code == 201

    @contextlib.contextmanager
    def export_dataset(
        self, name: str, version: int | None = None, *, format: Literal["jsonl", "csv"] = "jsonl"
    ) -> Iterator[Iterator[bytes]]:
        """A dataset version (``None``: the latest) as JSONL or CSV bytes, streamed; either can be pushed back."""
        path = f"/v1/evals/datasets/{encode_name(name)}/versions/{version or 'latest'}/export"
        response = self._run(self._core.call("GET", path, params={"format": format}, stream=True))
        try:
            yield guarded(response.url, response.iter_bytes())
        finally:
            response.close()

    def start_eval_run(
        self,
        prompt: str,
        version: int,
        dataset: str,
        scorers: list[dict[str, Any]],
        *,
        dataset_version: int | None = None,
        config_version: int | None = None,
        config: Mapping[str, Any] | None = None,
        pass_rule: Mapping[str, Any] | None = None,
        concurrency: int | None = None,
    ) -> dict[str, Any]:
        """Start evaluating ``version`` of ``prompt`` on ``dataset`` (its latest version unless told); the run
        is queued (``status``) and a worker of the service runs it. Follow it with ``eval_run_events``.

        It runs with the version's own config version, or ``config_version`` of that config, or ``config``: any
        config as ``{"name": ..., "version": N}`` or ``{"name": ..., "label": "production"}``."""
        body = eval_run_body(
            prompt, version, dataset, scorers, dataset_version, config_version, config, pass_rule, concurrency
        )
        return self._json("POST", "/v1/evals/runs", json=body)

    def get_eval_run(self, run_id: int) -> dict[str, Any]:
        """Status, progress, and pass rate and mean score with 95% intervals."""
        return self._json("GET", f"/v1/evals/runs/{run_id}")

    def list_eval_runs(self, *, prompt: str | None = None) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/evals/runs", {"prompt": prompt, "limit": 200})

    def eval_run_items(self, run_id: int, *, failed: bool = False) -> Iterator[dict[str, Any]]:
        """Each item's output, scores with reasons, latency, tokens, cost; ``failed``: only those that did not pass."""
        return self._pages(f"/v1/evals/runs/{run_id}/items", {"failed": "true" if failed else None, "limit": 200})

    def eval_run_events(self, run_id: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) as the run advances: ``progress`` (items done, pass rate and cost so far) whenever it
        changes, then ``done`` with the whole run, after which the iterator ends.

        The service writes only when something changes, so the stream waits for it without a read timeout.

        Example::

            for event, data in registry.eval_run_events(run["id"]):
                print(event, data["items_done"], "of", data["total_items"])
        """
        timeout = httpx.Timeout(self._options.timeout.connect, read=None)
        response = self._run(self._core.call("GET", f"/v1/evals/runs/{run_id}/events", stream=True, timeout=timeout))
        try:
            parser = SSEParser()
            for line in guarded(response.url, response.iter_lines()):
                event = parser.feed(line)
                if event is None:
                    continue
                try:
                    data = json.loads(event.data)
                except ValueError as exc:
                    raise ServiceUnavailable(f"{response.url} sent an event that is not JSON: {exc!r}") from exc
                yield event.event, data
                if event.event == "done":
                    return
        finally:
            response.close()

    def cancel_eval_run(self, run_id: int) -> dict[str, Any]:
        """Cancel a queued or running run; retried after a lost answer (a run already ended is returned as it is)."""
        return self._json("POST", f"/v1/evals/runs/{run_id}/cancel", idempotent=True)

    def compare_eval_runs(self, base: int, candidate: int) -> dict[str, Any]:
        """Two runs on the same dataset version item by item: McNemar, paired t, and the items that changed."""
        return self._json("GET", "/v1/evals/compare", params={"base": base, "candidate": candidate})

    def get_gate(self, name: str, state: str) -> dict[str, Any]:
        """The gate on ``state`` of prompt ``name``; ``NotFound`` (``gate_not_found``) when there is none."""
        return self._json("GET", f"/v1/prompts/{encode_name(name)}/gates/{state}")

    def set_gate(
        self,
        name: str,
        state: str,
        *,
        dataset: str,
        dataset_version: int | None = None,
        min_pass_rate: float | None = None,
        no_regression: bool = False,
        alpha: float = 0.05,
        scorers: list[dict[str, Any]] | None = None,
        pass_rule: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Gate ``state``: a version enters it only on a completed run that meets the gate (admin scope).

        ``scorers`` (and ``pass_rule``) name the scoring a run must have used to count; without them, any.
        """
        body = gate_body(dataset, dataset_version, min_pass_rate, no_regression, alpha, scorers, pass_rule)
        return self._json("PUT", f"/v1/prompts/{encode_name(name)}/gates/{state}", json=body)

    def delete_gate(self, name: str, state: str) -> None:
        """Remove the gate on ``state`` of prompt ``name``; ``NotFound`` (``gate_not_found``) when there is none.

        Retried like every delete: a retry that finds it gone after a try whose answer was lost is done.
        """
        self.request("DELETE", f"/v1/prompts/{encode_name(name)}/gates/{state}")
