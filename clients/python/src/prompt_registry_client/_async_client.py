"""The asyncio client: ``httpx.AsyncClient``, and tasks for the work it does in the background."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Hashable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx

from prompt_registry_client._base import BaseClient, ClientOptions, register_at_exit
from prompt_registry_client._client import Resource, satisfy_sync
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
    unreadable,
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
    The management calls are ``RegistryClient``'s, awaited; their listings are async iterators.

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

    # -- management (the API's JSON, as ``RegistryClient``'s methods of the same names; listings are async iterators)

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request (retried as the policy says); error answers raise the matching ``RegistryError``.

        A DELETE whose retry finds nothing to delete, after a try whose answer was lost, is done: its answer is
        that 404. Requests other than GET, HEAD, PUT and DELETE are not sent again once they may have arrived.
        """
        return await self._run(self._core.call(method, path, **kwargs))

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return parsed(await self.request(method, path, **kwargs), json_object)

    async def _pages(self, path: str, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            query = {k: v for k, v in {**params, "cursor": cursor}.items() if v is not None}
            page = await self._json("GET", path, params=query)
            for item in page["items"]:
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def list_resources(
        self, resource: Resource = "prompts", *, prefix: str | None = None, tag: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        return self._pages(f"/v1/{resource}", {"prefix": prefix, "tag": tag, "limit": 200})

    def list_versions(
        self, name: str, resource: Resource = "prompts", *, state: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        return self._pages(f"/v1/{resource}/{encode_name(name)}/versions", {"state": state, "limit": 200})

    async def current_version(self, name: str, state: str, resource: Resource = "prompts") -> int | None:
        """The version holding ``state`` (staging or production), or None."""
        path = f"/v1/{resource}/{encode_name(name)}/versions"
        page = await self._json("GET", path, params={"state": state, "limit": 1})  # one page, not a generator left open
        return int(page["items"][0]["version"]) if page["items"] else None

    async def promote(
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
        """As ``RegistryClient.promote``: without ``expected_current``, the holder is read first."""
        if expected_current is UNSET and to in ("staging", "production"):
            expected_current = await self.current_version(name, to, resource)
        body = promote_body(to, expected_current, reason, override_gate)
        return await self._json("POST", f"/v1/{resource}/{encode_name(name)}/versions/{version}/promote", json=body)

    async def rollback(
        self, name: str, reason: str, version: int | None = None, resource: Resource = "prompts"
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason, "version": version}
        return await self._json("POST", f"/v1/{resource}/{encode_name(name)}/rollback", json=body)

    def history(self, name: str, resource: Resource = "prompts") -> AsyncIterator[dict[str, Any]]:
        return self._pages(f"/v1/{resource}/{encode_name(name)}/history", {"limit": 200})

    async def diff(
        self, name: str, from_version: int, to_version: int, resource: Resource = "prompts"
    ) -> dict[str, Any]:
        params = {"from": from_version, "to": to_version}
        return await self._json("GET", f"/v1/{resource}/{encode_name(name)}/diff", params=params)

    async def create_experiment(self, definition: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/v1/experiments", json=definition)

    def list_experiments(
        self, *, status: str | None = None, prompt: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        return self._pages("/v1/experiments", {"status": status, "prompt": prompt, "limit": 200})

    async def update_experiment(self, key: str, changes: dict[str, Any]) -> dict[str, Any]:
        return await self._json("PATCH", f"/v1/experiments/{encode_name(key)}", json=changes)

    async def start_experiment(self, key: str) -> dict[str, Any]:
        return await self._json("POST", f"/v1/experiments/{encode_name(key)}/start")

    async def stop_experiment(
        self, key: str, *, winner: str | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        body = {k: v for k, v in {"winner": winner, "reason": reason}.items() if v is not None}
        return await self._json("POST", f"/v1/experiments/{encode_name(key)}/stop", json=body)

    async def get_experiment_definition(self, key: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/experiments/{encode_name(key)}")

    async def record_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Record outcome events now (up to 1000); each item of the answer says accepted, duplicate or rejected.

        Retried after a lost answer: each event's ``idempotency_key`` keeps it from counting twice (the
        answer then says duplicate for those the lost try recorded).
        """
        return await self._json("POST", "/v1/events", json={"events": events}, idempotent=True)

    async def resolve(
        self, name: str, resource: Resource = "prompts", *, label: str | None = None, version: int | None = None
    ) -> dict[str, Any]:
        params = {k: v for k, v in {"label": label, "version": version}.items() if v is not None}
        return await self._json("GET", f"/v1/{resource}/{encode_name(name)}", params=params)

    async def create_resource(
        self, name: str, resource: Resource = "prompts", *, description: str = "", tags: list[str] | None = None
    ) -> dict[str, Any]:
        body = {"name": name, "description": description, "tags": tags or []}
        return await self._json("POST", f"/v1/{resource}", json=body)

    async def get_version(self, name: str, version: int, resource: Resource = "prompts") -> dict[str, Any]:
        return await self._json("GET", f"/v1/{resource}/{encode_name(name)}/versions/{version}")

    async def create_version(
        self, name: str, body: Mapping[str, Any], resource: Resource = "prompts"
    ) -> dict[str, Any]:
        return await self._json("POST", f"/v1/{resource}/{encode_name(name)}/versions", json=dict(body))

    async def render_on_service(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        *,
        label: str | None = None,
        version: int | None = None,
        unit: str | None = None,
    ) -> dict[str, Any]:
        body = {"variables": dict(variables or {}), "label": label, "version": version, "unit": unit}
        return await self._json("POST", f"/v1/prompts/{encode_name(name)}/render", json=body)

    def list_metrics(self) -> AsyncIterator[dict[str, Any]]:
        return self._pages("/v1/metrics", {"limit": 200})

    async def create_metric(self, definition: Mapping[str, Any]) -> dict[str, Any]:
        return await self._json("POST", "/v1/metrics", json=dict(definition))

    async def usage(self, **params: Any) -> dict[str, Any]:
        query = {k: v for k, v in params.items() if v is not None}
        return await self._json("GET", "/v1/usage", params=query)

    def audit(
        self, *, actor: str | None = None, resource_type: str | None = None, resource_name: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        params = {"actor": actor, "resource_type": resource_type, "resource_name": resource_name, "limit": 200}
        return self._pages("/v1/audit", params)

    def list_webhooks(self, *, enabled: bool | None = None) -> AsyncIterator[dict[str, Any]]:
        return self._pages("/v1/webhooks", {"enabled": enabled_param(enabled), "limit": 200})

    async def create_webhook(self, url: str, events: list[str], *, description: str = "") -> dict[str, Any]:
        return await self._json("POST", "/v1/webhooks", json=webhook_body(url, events, description))

    async def get_webhook(self, webhook_id: int) -> dict[str, Any]:
        return await self._json("GET", f"/v1/webhooks/{webhook_id}")

    async def delete_webhook(self, webhook_id: int) -> None:
        """Delete the webhook and its delivery log; ``NotFound`` when no webhook has this id.

        Retried like every delete: a retry that finds it gone after a try whose answer was lost is done.
        """
        await self.request("DELETE", f"/v1/webhooks/{webhook_id}")

    async def ping_webhook(self, webhook_id: int) -> None:
        await self.request("POST", f"/v1/webhooks/{webhook_id}/ping")

    async def enable_webhook(self, webhook_id: int) -> dict[str, Any]:
        return await self._json("PATCH", f"/v1/webhooks/{webhook_id}", json={"enabled": True}, idempotent=True)

    async def disable_webhook(self, webhook_id: int) -> dict[str, Any]:
        return await self._json("PATCH", f"/v1/webhooks/{webhook_id}", json={"enabled": False}, idempotent=True)

    def webhook_deliveries(self, webhook_id: int, *, status: str | None = None) -> AsyncIterator[dict[str, Any]]:
        return self._pages(f"/v1/webhooks/{webhook_id}/deliveries", {"status": status, "limit": 200})

    async def redeliver(self, webhook_id: int, delivery_id: int) -> dict[str, Any]:
        return await self._json("POST", f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver")

    @contextlib.asynccontextmanager
    async def export_experiment(
        self, key: str, *, format: Literal["csv", "parquet"] = "csv", phase: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """As ``RegistryClient.export_experiment``: the per-unit rows of a phase, streamed (``analyze`` scope).

        Example::

            async with registry.export_experiment("greet-test") as chunks:
                async for chunk in chunks:
                    out.write(chunk)
        """
        params: dict[str, Any] = {"format": format}
        if phase is not None:
            params["phase"] = phase
        path = f"/v1/experiments/{encode_name(key)}/export"
        response = await self._run(self._core.call("GET", path, params=params, stream=True))
        try:
            yield _guarded(response.url, response.aiter_bytes())
        finally:
            await response.aclose()

    @contextlib.asynccontextmanager
    async def export_dataset(
        self, name: str, version: int | None = None, *, format: Literal["jsonl", "csv"] = "jsonl"
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A dataset version (``None``: the latest) as JSONL or CSV bytes, streamed."""
        path = f"/v1/evals/datasets/{encode_name(name)}/versions/{version or 'latest'}/export"
        response = await self._run(self._core.call("GET", path, params={"format": format}, stream=True))
        try:
            yield _guarded(response.url, response.aiter_bytes())
        finally:
            await response.aclose()

    async def eval_run_events(self, run_id: int) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """As ``RegistryClient.eval_run_events``: (event, data) as the run advances, ending after ``done``.

        Example::

            async for event, data in registry.eval_run_events(run["id"]):
                print(event, data["items_done"], "of", data["total_items"])
        """
        timeout = httpx.Timeout(self._options.timeout.connect, read=None)
        flow = self._core.call("GET", f"/v1/evals/runs/{run_id}/events", stream=True, timeout=timeout)
        response = await self._run(flow)
        try:
            parser = SSEParser()
            async for line in _guarded(response.url, response.aiter_lines()):
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
            await response.aclose()

    # -- evaluations: datasets, runs, gates

    def list_datasets(self, *, prefix: str | None = None) -> AsyncIterator[dict[str, Any]]:
        return self._pages("/v1/evals/datasets", {"prefix": prefix, "limit": 200})

    async def get_dataset(self, name: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/evals/datasets/{encode_name(name)}")

    async def create_dataset(self, name: str, *, description: str = "") -> dict[str, Any]:
        return await self._json("POST", "/v1/evals/datasets", json={"name": name, "description": description})

    def list_dataset_versions(self, name: str) -> AsyncIterator[dict[str, Any]]:
        return self._pages(f"/v1/evals/datasets/{encode_name(name)}/versions", {"limit": 200})

    async def get_dataset_version(self, name: str, version: int | None = None) -> dict[str, Any]:
        return await self._json("GET", f"/v1/evals/datasets/{encode_name(name)}/versions/{version or 'latest'}")

    async def push_dataset(
        self,
        name: str,
        content: bytes,
        *,
        format: Literal["jsonl", "csv"] = "jsonl",
        commit_message: str = "",
        create: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """As ``RegistryClient.push_dataset``: (the version, whether it is new); the same items create nothing."""
        path = f"/v1/evals/datasets/{encode_name(name)}/versions"
        media = "text/csv" if format == "csv" else "application/x-ndjson"
        send = {"content": content, "headers": {"Content-Type": media}, "params": {"commit_message": commit_message}}
        try:
            response = await self.request("POST", path, **send)
        except NotFound as exc:
            if not create or exc.type != "dataset_not_found":
                raise
            await self.create_dataset(name)
            response = await self.request("POST", path, **send)
        return parsed(response, json_object), response.status_code == 201

    async def start_eval_run(
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
        """As ``RegistryClient.start_eval_run``: the run is queued and a worker of the service runs it."""
        body = eval_run_body(
            prompt, version, dataset, scorers, dataset_version, config_version, config, pass_rule, concurrency
        )
        return await self._json("POST", "/v1/evals/runs", json=body)

    async def get_eval_run(self, run_id: int) -> dict[str, Any]:
        return await self._json("GET", f"/v1/evals/runs/{run_id}")

    def list_eval_runs(self, *, prompt: str | None = None) -> AsyncIterator[dict[str, Any]]:
        return self._pages("/v1/evals/runs", {"prompt": prompt, "limit": 200})

    def eval_run_items(self, run_id: int, *, failed: bool = False) -> AsyncIterator[dict[str, Any]]:
        return self._pages(f"/v1/evals/runs/{run_id}/items", {"failed": "true" if failed else None, "limit": 200})

    async def cancel_eval_run(self, run_id: int) -> dict[str, Any]:
        """Cancel a queued or running run; retried after a lost answer (a run already ended is returned as it is)."""
        return await self._json("POST", f"/v1/evals/runs/{run_id}/cancel", idempotent=True)

    async def compare_eval_runs(self, base: int, candidate: int) -> dict[str, Any]:
        return await self._json("GET", "/v1/evals/compare", params={"base": base, "candidate": candidate})

    async def get_gate(self, name: str, state: str) -> dict[str, Any]:
        """The gate on ``state`` of prompt ``name``; ``NotFound`` (``gate_not_found``) when there is none."""
        return await self._json("GET", f"/v1/prompts/{encode_name(name)}/gates/{state}")

    async def set_gate(
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
        """As ``RegistryClient.set_gate``: ``scorers`` (and ``pass_rule``) name the scoring a run must have used."""
        body = gate_body(dataset, dataset_version, min_pass_rate, no_regression, alpha, scorers, pass_rule)
        return await self._json("PUT", f"/v1/prompts/{encode_name(name)}/gates/{state}", json=body)

    async def delete_gate(self, name: str, state: str) -> None:
        """Remove the gate on ``state`` of prompt ``name``; ``NotFound`` (``gate_not_found``) when there is none.

        Retried like every delete: a retry that finds it gone after a try whose answer was lost is done.
        """
        await self.request("DELETE", f"/v1/prompts/{encode_name(name)}/gates/{state}")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _guarded(url: httpx.URL, parts: AsyncIterator[T]) -> AsyncIterator[T]:
    """``parts`` of a streamed answer, raising ``ServiceUnavailable`` if the stream breaks off."""
    try:
        async for part in parts:
            yield part
    except httpx.HTTPError as exc:
        raise unreadable(url, exc) from exc
