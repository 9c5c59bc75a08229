"""The asyncio client: ``httpx.AsyncClient``, and tasks for the work it does in the background."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Hashable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx

from prompt_registry_client._base import BaseClient, ClientOptions, register_at_exit
from prompt_registry_client._client import satisfy_sync
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
    parsed,
    run_async,
    run_sync,
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
from prompt_registry_client._streams import AsyncCompletionStream
from prompt_registry_client.templating import RenderLimits

T = TypeVar("T")
BACKGROUND_REQUESTS = 2  # as many as the sync client's refresh threads
logger = logging.getLogger("prompt_registry_client")


class AsyncRegistryClient(BaseClient):
    """``RegistryClient`` for asyncio: the same cache, fallbacks, local rendering and assignment.

    Background work (revalidation, the change feed, sending events) runs as tasks on the
    client's loop: the one running where it was made, else the first one it is used on.
    ``track()`` may also be called from other threads (a sync framework's workers): the
    event is handed to that loop. ``aclose()`` (or leaving ``async with``) sends what is
    queued. Events still queued at interpreter exit are sent then, without the loop.

    Example::

        async with AsyncRegistryClient("http://registry:8000", api_key="prk_...") as registry:
            rendered = await registry.render("greet", {"name": "Ada"}, unit="user-42")
            async with await registry.complete("greet", {"name": "Ada"}, stream=True) as stream:
                async for event in stream:
                    ...
            registry.track("user-42", "thumbs_up")
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
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._http = httpx.AsyncClient(
            base_url=options.base_url, headers=options.headers, timeout=options.timeout, transport=transport
        )
        self._core = options.core(self._http.build_request, on_cached=self._watch, on_queued=self._queued)
        self._closed = False
        self._closing = asyncio.Event()
        self._background: dict[Hashable, asyncio.Task[None]] = {}
        self._background_slots = asyncio.Semaphore(BACKGROUND_REQUESTS)
        self._sender: asyncio.Task[None] | None = None
        self._send_now = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._close_deadline = 0.0
        self._watcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = _running_loop()  # where the background tasks run
        self._at_exit = register_at_exit(self, AsyncRegistryClient._flush_at_exit)

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
        """As ``RegistryClient.track``; callable from any thread, the event is sent by the client's loop.

        From a thread without a running loop, the client must have a loop of its own (made on
        one, or used there once) that is still open: otherwise nothing would ever send the
        event, and a ``RuntimeError`` says so at once instead of queuing it.
        """
        if _running_loop() is None and (self._loop is None or self._loop.is_closed()):
            raise RuntimeError(
                "AsyncRegistryClient.track() was called from a thread without a running event loop, and the "
                "client has no open loop of its own to send the event from: make the client on the loop that "
                "serves your app, or use RegistryClient in threaded code"
            )
        return super().track(
            unit, metric, value, experiment=experiment, timestamp=timestamp, idempotency_key=idempotency_key
        )

    # -- prompts

    async def get_prompt(
        self,
        name: str,
        *,
        label: Label | None = None,
        version: int | None = None,
        unit: str | None = None,
        fallback: FallbackTemplate | None = None,
    ) -> Prompt:
        """As ``RegistryClient.get_prompt``: cached, routed locally with ``unit``, ``fallback`` when unreachable.

        Example::

            prompt = await registry.get_prompt("greet", unit="user-42", fallback="Hello {{ name }}!")
        """
        return await self._run(self._core.get_prompt(name, label=label, version=version, unit=unit, fallback=fallback))

    async def render(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        *,
        unit: str | None = None,
        label: Label | None = None,
        version: int | None = None,
        fallback: FallbackTemplate | None = None,
    ) -> RenderedPrompt:
        """``get_prompt(...)`` rendered locally with ``variables``.

        Example::

            rendered = await registry.render("greet", {"name": "Ada"}, unit="user-42")
        """
        prompt = await self.get_prompt(name, label=label, version=version, unit=unit, fallback=fallback)
        return prompt.render(variables, limits=self._options.render_limits)

    # -- completions

    @overload
    async def complete(
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
    async def complete(
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
    ) -> AsyncCompletionStream: ...

    async def complete(
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
    ) -> Completion | AsyncCompletionStream:
        """As ``RegistryClient.complete``; with ``stream=True`` an ``AsyncCompletionStream``.

        A ``fallback`` function may be a coroutine function: it is awaited.

        Example::

            async with await registry.complete("greet", {"name": "Ada"}, stream=True) as stream:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        print(event.text, end="")
        """
        if label is not None and version is not None:
            raise ValueError("give a label or a version, not both")
        if fallback is not None:
            if stream:
                raise ValueError("a fallback answers whole completions: use it with stream=False")
            options = {"max_tokens": max_tokens, "seed": seed, "user": user}
            return await self._run(
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
        response = await self._run(flow)
        if stream:
            return AsyncCompletionStream(response)
        return parsed(response, completion_from_json)

    # -- experiments

    async def get_experiment(self, key: str) -> Experiment:
        """An experiment's definition; ``.assign(unit)`` gives the variant the service would."""
        return await self._run(self._core.get_experiment(key))

    async def experiment_results(self, key: str, *, phase: int | None = None) -> ExperimentResults:
        """Results per metric and variant (the key needs the ``analyze`` scope); ``.to_pandas()`` for a table."""
        params = {"phase": phase} if phase is not None else {}
        flow = self._core.call("GET", f"/v1/experiments/{encode_name(key)}/results", params=params)
        return parsed(await self._run(flow), results_from_json)

    # -- background work

    async def flush(self) -> bool:
        """Send every queued event and exposure now; False if the service could not take them all."""
        async with self._send_lock:
            return await self._run(self._core.send_batches()) and self._core.outbox.pending == 0

    async def aclose(self) -> None:
        """Send what is queued (for up to ``BatchPolicy.close_timeout``), stop the background work, disconnect."""
        if self._closed:
            return
        self._closed = True
        self._close_deadline = time.monotonic() + self._options.batches.close_timeout
        self._core.outbox.close()
        self._closing.set()
        if self._watcher is not None:
            self._watcher.cancel()
        if self._sender is not None:
            self._send_now.set()
            # As the sync client: a request in flight to a registry that does not answer is not waited out.
            done, _ = await asyncio.wait({self._sender}, timeout=self._options.batches.close_timeout + 1)
            if not done:
                self._sender.cancel()
                await asyncio.gather(self._sender, return_exceptions=True)
                logger.error("closing with %d events not sent", self._core.outbox.pending)
        elif self._core.outbox.pending:
            try:
                await asyncio.wait_for(self.flush(), self._options.batches.close_timeout)
            except Exception as exc:
                logger.error("could not send %d events before closing: %r", self._core.outbox.pending, exc)
        for task in self._background.values():
            task.cancel()
        await asyncio.gather(*self._background.values(), *filter(None, [self._watcher]), return_exceptions=True)
        await self._http.aclose()
        atexit.unregister(self._at_exit)

    async def __aenter__(self) -> AsyncRegistryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    def _flush_at_exit(self) -> None:
        """At interpreter exit the loop is gone: send what is left with a plain sync connection."""
        if self._closed or not self._core.outbox.pending:
            return
        timeout = httpx.Timeout(self._options.batches.close_timeout, connect=self._options.timeout.connect)
        with httpx.Client(timeout=timeout) as http:
            try:
                run_sync(self._core.send_batches(), lambda need: satisfy_sync(http, need))
            except Exception as exc:
                logger.error("could not send %d events at exit: %r", self._core.outbox.pending, exc)

    async def _run(self, flow: Flow[T]) -> T:
        self._on_loop(asyncio.get_running_loop())
        return await run_async(flow, self._satisfy)

    def _on_loop(self, running: asyncio.AbstractEventLoop) -> bool:
        """Take ``running`` as the client's loop if it has none open; whether ``running`` is the client's."""
        if self._loop is None or self._loop.is_closed():
            self._loop = running
        return running is self._loop

    async def _satisfy(self, need: Need) -> Any:
        if isinstance(need, Send):
            return await self._http.send(need.request, stream=need.stream)
        if isinstance(need, Read):
            try:
                await need.response.aread()
            finally:
                await need.response.aclose()
            return need.response
        if isinstance(need, Sleep):
            await asyncio.sleep(need.seconds)
            return None
        if isinstance(need, Call):
            result = need.function(*need.args)
            return await result if inspect.isawaitable(result) else result
        self._spawn(need)
        return None

    def _spawn(self, need: Spawn) -> None:
        if self._closed or need.key in self._background:
            need.flow.close()
            return
        self._background[need.key] = asyncio.get_running_loop().create_task(self._run_in_background(need))

    async def _run_in_background(self, need: Spawn) -> None:
        try:
            async with self._background_slots:  # a reset revalidates every copy: a few at a time
                await self._run(need.flow)
        except Exception as exc:
            logger.debug("background refresh failed: %r", exc)
        finally:
            self._background.pop(need.key, None)

    def _queued(self) -> None:
        """Something was queued: start or wake the sender, on the client's loop whatever thread this runs in."""
        running = _running_loop()
        if running is not None and self._on_loop(running):
            self._start_sending()
        elif self._loop is not None:
            # Another thread (or loop): asyncio's tasks and events are the loop's own, so the loop does it.
            with contextlib.suppress(RuntimeError):  # closed meanwhile: aclose() or exit sends the event
                self._loop.call_soon_threadsafe(self._start_sending)

    def _start_sending(self) -> None:
        if self._sender is None and not self._closed:
            self._sender = asyncio.get_running_loop().create_task(self._send_loop())
        if self._core.outbox.full_batch_waiting():
            self._send_now.set()

    async def _send_loop(self) -> None:
        failures = 0
        policy = self._options.batches
        while True:
            wait = policy.flush_interval if failures == 0 else backoff(policy.flush_interval, failures, 30.0)
            if failures and self._core.send_again_in is not None:  # the registry said when (a rate limit's minute)
                wait = max(wait, self._core.send_again_in)
            if self._closing.is_set():
                wait = min(wait, 0.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._send_now.wait(), wait)
            self._send_now.clear()
            closing = self._closing.is_set()
            try:
                sent = await self.flush()
            except Exception as exc:
                logger.warning("could not send events: %r", exc)
                sent = False
            failures = 0 if sent else failures + 1
            if closing and (sent or time.monotonic() > self._close_deadline):
                if not sent:
                    logger.error("closing with %d events not sent", self._core.outbox.pending)
                return

    def _watch(self) -> None:
        if not self._options.cache.watch_changes or self._watcher is not None or self._closed:
            return
        self._watcher = asyncio.get_running_loop().create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        reconnects = self._core.feed_reconnects()
        while not self._closed:
            error: Exception | None = None
            try:
                async for connected in self._follow_changes():  # each connect revalidates every cached copy
                    if connected:
                        reconnects.connected()
            except Exception as exc:
                logger.debug("the change feed dropped: %r", exc)
                error = exc
            pause = reconnects.after_drop(error)
            if pause is None:
                logger.error("the change feed stops: the registry refused the client's key (%r)", error)
                return
            if await self._pause(pause):
                return

    async def _pause(self, seconds: float) -> bool:
        """Wait before reconnecting the feed; True when the client closed meanwhile (a seam for tests)."""
        await asyncio.sleep(seconds)
        return self._closed

    async def _follow_changes(self) -> AsyncIterator[bool]:
        response = await self._http.send(self._core.feed_request(), stream=True)
        try:
            if response.status_code != 200:
                await response.aread()
                raise error_from_response(response)
            parser = SSEParser()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is None:
                    continue
                for spawn in self._core.on_change(event):
                    self._spawn(spawn)
                yield event.event == "hello"
        finally:
            await response.aclose()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
