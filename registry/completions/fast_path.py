"""``POST /v1/prompts/{name}/complete`` served in front of Litestar, and what its Litestar handler shares with it.

A streamed completion's own work per request (the key, the render, the plan,
the record) costs about as much as Litestar's around it, so this route is
served as resolve and render are (``registry.lib.front``): a well-formed body
is decoded with the handler's msgspec type and answered here; anything else
(a body that does not decode strictly, one over the size limit, an odd Host)
goes to the Litestar handler, which answers it as before. Both build their
answers with ``complete_answer`` below. ``REGISTRY_FAST_PATH=false`` turns it off;
``tests/completions/test_fast_path.py`` checks that both answer alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from registry.auth.access import authorize, required_scope
from registry.completions.schemas import CompleteRequest, CompletionOut, DoneEvent
from registry.completions.service import Caller, CompletionService
from registry.completions.sse import encode_delta, encode_event
from registry.lib.disconnect import DisconnectWatch
from registry.lib.errors import RegistryError, problem_body, translate_and_log
from registry.lib.front import (
    FrontRoute,
    Streamed,
    front_routes,
    plain_request,
    problem_response,
    read_decoded,
    serve,
)
from registry.lib.http import JsonResponse, decode_name
from registry.prompts.fast_path import label_or_version
from registry.runtime import Runtime

COMPLETE_OPERATION = "completePrompt"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_decode_complete = msgspec.json.Decoder(CompleteRequest).decode
_encode = msgspec.json.Encoder().encode


class ServerSentEvents:
    """Our events as bytes (a ``StreamEncoder``); the metadata leaves in the same write as the first token.

    A failure becomes the problem body (``instance``, ``request_id`` and all) that the
    same failure before the first token is answered with, and is logged the same way.
    """

    __slots__ = ("instance", "request_id")
    delta = staticmethod(encode_delta)

    def __init__(self, instance: str, request_id: str | None) -> None:
        self.instance = instance
        self.request_id = request_id

    @staticmethod
    def done(event: DoneEvent) -> bytes:
        return encode_event("done", event)

    def error(self, error: RegistryError) -> bytes:
        translated = translate_and_log(error, self.instance)
        return encode_event("error", problem_body(translated, instance=self.instance, request_id=self.request_id))


async def started(events: AsyncIterator[bytes]) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first part of ``events`` (buffered, so at once) and the started generator, for the rest.

    asyncio closes a started generator that is dropped, which closes the
    upstream connection and frees its slot even if the response never begins
    streaming; a generator that was never started would be dropped silently.
    The response closes it when it ends, however it ends.
    """
    return await anext(events, b""), events


async def complete_answer(
    service: CompletionService,
    name: str,
    data: CompleteRequest,
    caller: Caller,
    watch: DisconnectWatch,
    *,
    instance: str,
) -> CompletionOut | Streamed:
    """The completion, or its stream once the first token is in hand (a failure before it is raised)."""
    label_or_version(data.label, data.version)
    if not data.stream:
        return await watch.until(service.complete(name, data, caller))
    stream = await watch.until(service.open_stream(name, data, caller))
    first, rest = await watch.until(started(stream.encoded(ServerSentEvents(instance, caller.request_id))))
    return Streamed(encode_event("metadata", stream.meta) + first, rest, SSE_HEADERS)


class CompletionFastPath:
    def __init__(self, app: ASGIApp, runtime: Runtime, *, prefix: str, route: FrontRoute, max_body_bytes: int) -> None:
        self.app = app
        self._runtime = runtime
        self._prefix = prefix  # "/v1/prompts/"
        self._route = route
        self._scope = required_scope(route)
        self._max_body_bytes = max_body_bytes
        self.served = 0  # requests answered here; the rest went on to Litestar

    @classmethod
    def in_front_of(cls, litestar: Litestar, app: ASGIApp, runtime: Runtime, api_prefix: str) -> CompletionFastPath:
        """Built from the Litestar route it stands in for; refuses to start if it moved."""
        prefix = f"{api_prefix}/prompts/"
        routes = front_routes(litestar, {COMPLETE_OPERATION: f"{prefix}{{name:str}}/complete"})
        return cls(
            app,
            runtime,
            prefix=prefix,
            route=routes[COMPLETE_OPERATION],
            max_body_bytes=runtime.settings.max_body_bytes,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self._match(scope)
        if name is not None:
            passed_on = await self._complete(scope, name, receive, send)
            if passed_on is None:
                return
            receive = passed_on
        await self.app(scope, receive, send)

    def _match(self, scope: Scope) -> str | None:
        """The name segment of a completion request, else None."""
        if scope["type"] != ScopeType.HTTP or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        if not path.startswith(self._prefix) or not path.endswith("/complete"):
            return None
        name = path[len(self._prefix) : -len("/complete")]
        if not name or "/" in name or not plain_request(scope):
            return None
        return name

    async def _complete(self, scope: Scope, name: str, receive: Receive, send: Send) -> Receive | None:
        """Serve a completion; or return the ``receive`` to hand the request to Litestar with, body unread."""
        data, handoff = await read_decoded(receive, self._max_body_bytes, _decode_complete)
        if data is None:
            return handoff
        scope["path_template"] = self._route.template
        self.served += 1
        runtime = self._runtime

        async def respond(watch: DisconnectWatch) -> JsonResponse | Streamed:
            principal = await authorize(runtime, scope["headers"], self._scope)
            caller = Caller(key=principal.public_id, request_id=scope["state"].get("request_id"))
            service = CompletionService(runtime.completions, runtime.prompts)
            answer = await complete_answer(service, decode_name(name), data, caller, watch, instance=scope["path"])
            return answer if isinstance(answer, Streamed) else JsonResponse(_encode(answer))

        await serve(scope, receive, send, respond, lambda exc: problem_response(exc, scope))
        return None
