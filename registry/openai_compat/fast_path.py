"""``POST /v1/chat/completions`` and ``/v1/completions`` served in front of Litestar, as ``/complete`` is.

The door is the path apps calling through an OpenAI SDK take on every request,
so it is served like ``registry.completions.fast_path``: a body that decodes
strictly with the handler's msgspec type is answered here, anything else goes
on to the Litestar handler (which keeps the OpenAPI document). Both build
their answers with ``openai_answer``, and both answer errors with OpenAI's error
object. ``tests/openai_compat/test_fast_path.py`` checks that both answer alike.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import msgspec
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from registry.auth.access import authorize, required_scope
from registry.completions.fast_path import SSE_HEADERS, started
from registry.completions.service import Caller
from registry.lib.disconnect import DisconnectWatch
from registry.lib.errors import translate_and_log
from registry.lib.front import (
    FrontRoute,
    Streamed,
    front_routes,
    plain_request,
    read_decoded,
    serve,
)
from registry.lib.http import JsonResponse
from registry.openai_compat.schemas import ChatCompletion, ChatCompletionRequest, TextCompletion, TextCompletionRequest
from registry.openai_compat.service import (
    ChunkEncoder,
    ConfigResolver,
    OpenAIChunks,
    completion_answer,
    error_answer,
    prepare_call,
    registry_headers,
)
from registry.runtime import Runtime

CHAT_OPERATION = "createChatCompletion"
TEXT_OPERATION = "createCompletion"
RESOLVER_STATE = "openai_config_resolver"
_encode = msgspec.json.Encoder().encode


def config_resolver(state: MutableMapping[str, Any], runtime: Runtime) -> ConfigResolver:
    """The app's one resolver of ``config:`` models, made on first use (it subscribes to the change bus)."""
    resolver: ConfigResolver | None = state.get(RESOLVER_STATE)
    if resolver is None:
        settings = runtime.settings
        resolver = ConfigResolver(
            runtime.sessionmaker,
            runtime.bus,
            ttl=settings.cache_ttl_seconds,
            degraded_ttl=settings.cache_degraded_ttl_seconds,
            max_entries=settings.cache_max_prompts,
        )
        state[RESOLVER_STATE] = resolver
    return resolver


def error_document(exc: Exception, path: str, request_id: str | None) -> JsonResponse:
    """Any failure as OpenAI's error object, with the status and headers (``Retry-After``...) of its problem."""
    error = translate_and_log(exc, path)
    body = error_answer(error, instance=path, request_id=request_id)
    return JsonResponse(_encode(body), status=error.status_code, headers=error.headers)


async def openai_answer(
    runtime: Runtime,
    resolver: ConfigResolver,
    data: ChatCompletionRequest | TextCompletionRequest,
    caller: Caller,
    watch: DisconnectWatch,
    *,
    instance: str,
) -> tuple[ChatCompletion | TextCompletion, dict[str, str]] | Streamed:
    """The answer and its headers, or the stream once the first token is in hand (a failure before it is raised)."""
    call = prepare_call(runtime.completions, runtime.prompts, resolver, data, request_id=caller.request_id)
    if not data.stream:
        out = await watch.until(call.service.complete(call.name, call.request, caller))
        return completion_answer(call, out), registry_headers(out, out.cost)
    stream = await watch.until(call.service.open_stream(call.name, call.request, caller))
    encoder = ChunkEncoder(call)
    chunks = OpenAIChunks(encoder, stream.meta, instance=instance, request_id=caller.request_id)
    first, rest = await watch.until(started(stream.encoded(chunks)))
    # The opening chunk leaves with the first token.
    return Streamed(encoder.start() + first, rest, {**SSE_HEADERS, **registry_headers(stream.meta)})


class OpenAIFastPath:
    def __init__(
        self,
        app: ASGIApp,
        runtime: Runtime,
        state: MutableMapping[str, Any],
        *,
        routes: dict[str, tuple[FrontRoute, type[ChatCompletionRequest] | type[TextCompletionRequest]]],
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self._runtime = runtime
        self._state = state  # the app's, where the config resolver is kept
        self._routes = routes  # by path
        self._scopes = {path: required_scope(route) for path, (route, _) in routes.items()}
        self._decoders = {path: msgspec.json.Decoder(kind).decode for path, (_, kind) in routes.items()}
        self._max_body_bytes = max_body_bytes
        self.served = 0  # requests answered here; the rest went on to Litestar

    @classmethod
    def in_front_of(cls, litestar: Litestar, app: ASGIApp, runtime: Runtime, api_prefix: str) -> OpenAIFastPath:
        """Built from the Litestar routes it stands in for; refuses to start if they moved."""
        kinds: dict[str, tuple[str, type[ChatCompletionRequest] | type[TextCompletionRequest]]] = {
            f"{api_prefix}/chat/completions": (CHAT_OPERATION, ChatCompletionRequest),
            f"{api_prefix}/completions": (TEXT_OPERATION, TextCompletionRequest),
        }
        found = front_routes(litestar, {operation: path for path, (operation, _) in kinds.items()})
        routes = {path: (found[operation], kind) for path, (operation, kind) in kinds.items()}
        return cls(app, runtime, litestar.state, routes=routes, max_body_bytes=runtime.settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._match(scope):
            passed_on = await self._serve(scope, receive, send)
            if passed_on is None:
                return
            receive = passed_on
        await self.app(scope, receive, send)

    def _match(self, scope: Scope) -> bool:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "POST":
            return False
        return scope["path"] in self._routes and plain_request(scope)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Serve a completion; or return the ``receive`` to hand the request to Litestar with, body unread."""
        path: str = scope["path"]
        data, handoff = await read_decoded(receive, self._max_body_bytes, self._decoders[path])
        if data is None:
            return handoff
        route = self._routes[path][0]
        scope["path_template"] = route.template
        self.served += 1
        runtime = self._runtime
        request_id = scope["state"].get("request_id")

        async def respond(watch: DisconnectWatch) -> JsonResponse | Streamed:
            principal = await authorize(runtime, scope["headers"], self._scopes[path])
            caller = Caller(key=principal.public_id, request_id=request_id)
            resolver = config_resolver(self._state, runtime)
            answer = await openai_answer(runtime, resolver, data, caller, watch, instance=path)
            if isinstance(answer, Streamed):
                return answer
            out, headers = answer
            return JsonResponse(_encode(out), headers=headers)

        await serve(scope, receive, send, respond, lambda exc: error_document(exc, path, request_id))
        return None
