"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` as OpenAI's SDKs call them.

Errors, wherever they come from (the key's check, the body's validation, the
completion path), are answered with OpenAI's error object and the status the rest
of the API gives the same problem, so the SDKs raise their matching exceptions.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope
from registry.auth.principal import Principal
from registry.completions.service import Caller
from registry.lib.disconnect import DisconnectWatch
from registry.lib.errors import translate_and_log
from registry.lib.front import SSE_MEDIA_TYPE, Streamed
from registry.lib.http import decode_name
from registry.lib.streaming import PrimedStream
from registry.openai_compat.fast_path import config_resolver, openai_answer
from registry.openai_compat.model_list import ModelPages
from registry.openai_compat.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorOut,
    ModelList,
    ModelOut,
    TextCompletion,
    TextCompletionRequest,
)
from registry.openai_compat.service import ModelListing, error_answer
from registry.runtime import Runtime, runtime_of

# What this door answers, all as OpenAI's error object: its handler's failures, and the requests refused before
# routing (414, 415, 431) or at it (405), shaped by the app's ErrorShape for the door's paths (registry.app).
ERROR_STATUSES = (400, 401, 403, 404, 405, 408, 413, 414, 415, 422, 429, 431, 502, 503, 504)
_ANSWER = "The completion, with the registry's facts."
_ERRORS = {
    status: ResponseSpec(
        ErrorOut,
        description="OpenAI's error object; `type` is the problem type, and so is `code` but for a model there is "
        "no version of: `model_not_found`, as OpenAI answers it.",
    )
    for status in ERROR_STATUSES
}


def openai_error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Any failure as OpenAI's error object, with the status and headers (``Retry-After``...) of its problem."""
    error = translate_and_log(exc, request.url.path)
    body = error_answer(error, instance=request.url.path, request_id=request.scope["state"].get("request_id"))
    return Response(
        msgspec.json.encode(body), status_code=error.status_code, headers=error.headers, media_type="application/json"
    )


def provide_model_listing(read_session: NamedDependency[AsyncSession]) -> ModelListing:
    return ModelListing(read_session)


def provide_model_pages(read_session: NamedDependency[AsyncSession], runtime: NamedDependency[Runtime]) -> ModelPages:
    return ModelPages(read_session, max_limit=runtime.settings.openai_models_page_size)


class OpenAIController(Controller):
    path = "/"
    tags = ["openai-compatible"]
    exception_handlers = {Exception: openai_error_response}

    @post(
        "/chat/completions",
        opt={"scope": Scope.READ},
        operation_id="createChatCompletion",
        summary="OpenAI-compatible chat completion of a prompt or a model config",
        status_code=200,
        responses={200: ResponseSpec(ChatCompletion, description=_ANSWER), **_ERRORS},
    )
    async def chat_completions(
        self, request: Request[Principal, Any, Any], data: JSONBody[ChatCompletionRequest]
    ) -> Response[Any]:
        return await _answer(request, data)

    @post(
        "/completions",
        opt={"scope": Scope.READ},
        operation_id="createCompletion",
        summary="OpenAI-compatible text completion of a prompt or a model config",
        status_code=200,
        responses={200: ResponseSpec(TextCompletion, description=_ANSWER), **_ERRORS},
    )
    async def completions(
        self, request: Request[Principal, Any, Any], data: JSONBody[TextCompletionRequest]
    ) -> Response[Any]:
        return await _answer(request, data)

    @get(
        "/models",
        opt={"scope": Scope.READ},
        operation_id="listModels",
        summary="The prompt: and config: models there are to call",
        description="Prompts, then configs, by name. Without `limit` the answer holds up to the registry's "
        "`openai_models_page_size` (1,000 unless set); `has_more` says there are more, read on with "
        "`?after=<last_id>`.",
        dependencies={"pages": Provide(provide_model_pages, sync_to_thread=False)},
        responses=_ERRORS,
    )
    async def models(
        self,
        pages: NamedDependency[ModelPages],
        limit: Annotated[
            int | None, QueryParameter(description="Models in this answer; at most, and by default, the page size.")
        ] = None,
        after: Annotated[
            str | None, QueryParameter(description="The `last_id` of the previous answer: the list goes on after it.")
        ] = None,
    ) -> ModelList:
        return await pages.page(limit=limit, after=after)

    @get(
        "/models/{model:str}",
        opt={"scope": Scope.READ},
        operation_id="retrieveModel",
        summary="One prompt: or config: model, if there is a version of it to call",
        description="The SDK sends a `/` in the name as `%2F` (`prompt:support%2Fsummarize@staging`).",
        dependencies={"listing": Provide(provide_model_listing, sync_to_thread=False)},
        responses=_ERRORS,
    )
    async def model(self, listing: NamedDependency[ModelListing], model: FromPath[str]) -> ModelOut:
        return await listing.model(decode_name(model))


async def _answer(
    request: Request[Principal, Any, Any], data: ChatCompletionRequest | TextCompletionRequest
) -> Response[Any]:
    """What the fast path (registry.openai_compat.fast_path) serves, for the requests it hands on."""
    runtime = runtime_of(request)
    caller = Caller(key=request.user.public_id, request_id=request.scope["state"].get("request_id"))
    resolver = config_resolver(request.app.state, runtime)
    watch = DisconnectWatch(request.receive)
    try:
        answer = await openai_answer(runtime, resolver, data, caller, watch, instance=request.url.path)
    finally:
        watch.stop()  # Litestar's stream listens for the disconnect itself
    if isinstance(answer, Streamed):
        return PrimedStream(answer.first, answer.rest, media_type=SSE_MEDIA_TYPE, headers=answer.headers)
    out, headers = answer
    return Response(out, headers=headers)
