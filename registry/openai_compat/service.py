"""The OpenAI-compatible door: OpenAI's requests in, the completion path run, OpenAI's answers out.

Nothing here runs a completion: a request becomes a ``CompleteRequest`` for
``CompletionService`` (budgets, breaker, retries, fallback, cache, usage), which a
subclass feeds with the caller's own messages (after the prompt's) or, for a
``config:`` model, with only those. The answers of both doors come from the same
``CompletionOut`` and stream events.

Streamed chunks are built from bytes made once per stream (everything around the
text), so each token costs one JSON string encoding.
"""

from __future__ import annotations

import calendar
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import msgspec
from prompt_registry_client.templating import compile_prompt
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.components import Completions
from registry.completions.schemas import CompleteRequest, CompletionMeta, CompletionOut, DoneEvent
from registry.completions.service import CompletionService
from registry.configs.repository import ConfigRepository
from registry.configs.service import CONFIG_ERRORS, ConfigService
from registry.db.engine import READ_ONLY
from registry.lib.cache import TTLCache
from registry.lib.changes import Change, ChangeBus
from registry.lib.errors import (
    DatabaseUnavailableError,
    FieldError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
    problem_body,
    translate_and_log,
)
from registry.lib.promotion import State
from registry.lib.single_flight import SingleFlight
from registry.lib.versioned import VersionWorkflow
from registry.lib.versioned_schemas import Label, VersionNumber
from registry.openai_compat.errors import ModelNotFoundError, PromptKindMismatchError, echoed, openai_code
from registry.openai_compat.schemas import (
    CONFIG_FIELDS,
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ErrorDetail,
    ErrorOut,
    ModelOut,
    OpenAIRequest,
    RegistryFacts,
    TextChoice,
    TextCompletion,
    TextCompletionRequest,
    Usage,
)
from registry.prompts.catalog import PromptCatalog, PromptEntry, Rendering, Resolution, ResolvedVersion
from registry.prompts.errors import PROMPT_ERRORS
from registry.prompts.fast_path import experiment_headers
from registry.prompts.repository import PromptRepository
from registry.prompts.schemas import Labels, LinkedConfig, Message, RenderOut

OWNER = "prompt-registry"
_MODEL = re.compile(r"^(prompt|config):([^@\s]+)(?:@(production|staging|latest|[1-9][0-9]{0,9}))?$")


# --------------------------------------------------------------------------- the model a request names


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """What ``model`` names: a prompt (rendered, then run with its config) or a config (the messages as sent)."""

    kind: Literal["prompt", "config"]
    name: str
    label: Label | None = None
    version: int | None = None


def parse_model(model: str) -> ModelTarget:
    match = _MODEL.fullmatch(model)  # not match: its "$" also matches before a final newline
    if match is None:
        raise ModelNotFoundError(
            f"the model '{echoed(model)}' is not one this service runs: name 'prompt:NAME' or 'config:NAME', "
            "optionally with '@production', '@staging', '@latest' or '@VERSION'; GET /v1/models lists them"
        )
    kind: Literal["prompt", "config"] = "prompt" if match[1] == "prompt" else "config"
    name, ref = match[2], match[3]
    if ref is None:
        return ModelTarget(kind, name)
    if ref.isdigit():
        try:
            version = msgspec.convert(int(ref), VersionNumber)
        except msgspec.ValidationError:
            # No version is numbered so (the column is a 32-bit integer): not sent to the database, which refuses it.
            raise ModelNotFoundError(
                f"the model '{echoed(model)}' does not exist: versions are numbered from 1 to 2147483647"
            ) from None
        return ModelTarget(kind, name, version=version)
    return ModelTarget(kind, name, label=cast(Label, ref))


def config_field_problems(data: OpenAIRequest) -> list[FieldError]:
    """The sampling fields the caller sent that the model config sets (``/complete`` refuses them alike)."""
    return [
        FieldError(name, "is set by the model config; a request may only lower max_tokens and set seed and user")
        for name in CONFIG_FIELDS
        if getattr(data, name, None) is not None
    ]


def complete_request(target: ModelTarget, data: OpenAIRequest) -> CompleteRequest:
    """The ``/complete`` request the OpenAI one amounts to; refuses what ``/complete`` would."""
    problems = config_field_problems(data)
    if data.stream_options is not None and not data.stream:
        problems.append(FieldError("stream_options", "is only allowed when stream is true"))
    if data.max_tokens is not None and data.max_completion_tokens not in (None, data.max_tokens):
        problems.append(FieldError("max_completion_tokens", "differs from max_tokens; send one of them"))
    if target.kind == "config" and data.variables:
        problems.append(FieldError("variables", "a config: model renders no prompt; send the messages only"))
    if target.kind == "config" and isinstance(data, ChatCompletionRequest) and not data.messages:
        problems.append(FieldError("messages", "a config: model runs the request's messages; send at least one"))
    if problems:
        raise InvalidInputError("the request cannot run as it is", errors=problems)
    return CompleteRequest(
        variables=data.variables,
        label=target.label,
        version=target.version,
        unit=data.unit or data.user,
        stream=bool(data.stream),
        max_tokens=data.max_tokens or data.max_completion_tokens,
        seed=data.seed,
        user=data.user,
    )


# --------------------------------------------------------------------------- running it


class ConfigResolver:
    """A ``config:`` model's version, kept in process as the catalog keeps prompts.

    Read from the database on first use, in a short session of its own; a change to the config
    (published on the bus, on every replica) drops what was kept of it. Past its lifetime an entry
    is read again, and if the database cannot be reached then, the old copy keeps being served.
    Requests that miss the same entry together share one read (and its failure).
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        bus: ChangeBus,
        *,
        ttl: float,
        degraded_ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.bus = bus
        self.ttl = ttl
        self.degraded_ttl = degraded_ttl
        self._entries: TTLCache[ModelTarget, LinkedConfig] = TTLCache(max_entries, clock)
        self._reading: SingleFlight[ModelTarget, LinkedConfig] = SingleFlight()
        self._generation = 0  # changes seen
        self.reads = 0  # database reads, for tests and metrics
        bus.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        if change.kind == "reset":
            self._entries.clear()
            self._reading.forget_all()
        elif change.kind == "config":
            self._entries.pop_where(lambda target: target.name == change.name)
            self._reading.forget_where(lambda target: target.name == change.name)
        else:
            return
        self._generation += 1

    async def __call__(self, target: ModelTarget) -> LinkedConfig:
        kept = self._entries.peek(target)
        if kept is not None and kept[1]:
            return kept[0]
        try:
            return await self._reading.load(target, lambda: self._read(target))
        except (SQLAlchemyError, OSError, DatabaseUnavailableError):
            if kept is None:
                raise
            return kept[0]  # stale, but what this config was: better than failing while the database is away

    async def _read(self, target: ModelTarget) -> LinkedConfig:
        self.reads += 1
        generation = self._generation
        async with self.sessionmaker() as session:
            await session.connection(execution_options=READ_ONLY)  # no write lock on SQLite for a read
            _, version = await ConfigService(session).workflow.resolve(
                target.name, version=target.version, label=target.label
            )
            config = LinkedConfig.of(version)
        assert config is not None  # a resolved version is never None
        if generation == self._generation:  # else a change overlapped the read: not kept
            self._entries.set(target, config, self.ttl if self.bus.connected else self.degraded_ttl)
        return config


def _no_prompt() -> ResolvedVersion:
    return ResolvedVersion(
        number=0,
        state=State.PRODUCTION,
        kind="text",
        compiled=compile_prompt("text", template=""),
        config=None,
        body=b"",
        etag="",
    )


_NO_PROMPT = _no_prompt()


def direct_rendering(config: LinkedConfig, *, messages: list[Message] | None, text: str | None) -> Rendering:
    """A ``config:`` model's input as the completion path takes it: no prompt, version 0, texts not stored."""
    entry = PromptEntry(
        prompt_id=0, name="", description="", tags=[], labels=Labels(production=None, staging=None, latest=None)
    )
    out = RenderOut(
        prompt="",
        version=0,
        state=State.PRODUCTION,
        kind="chat" if messages is not None else "text",
        text=text,
        messages=messages,
        config=None,
    )
    return Rendering(out, Resolution(entry=entry, version=_NO_PROMPT, stale=False, config=config))


class OpenAICompletions(CompletionService):
    """The completion path with the caller's input added to the prompt's, or standing alone for a config."""

    def __init__(
        self,
        completions: Completions,
        catalog: PromptCatalog,
        *,
        target: ModelTarget,
        resolve_config: ConfigResolver,
        messages: list[Message] | None = None,
        names: list[str | None] | None = None,
        text: str | None = None,
    ) -> None:
        super().__init__(completions, catalog)
        self.target = target
        self.resolve_config = resolve_config
        self.messages = messages  # a chat request's turns
        self.names = names or []  # their participants' names (None: none), one per turn when any is named
        self.text = text  # a text request's prompt

    def _caller_texts(self, data: CompleteRequest) -> list[str]:
        """The caller's own messages (or prompt text) are its input too, for the injection and delimiter guards
        (their names go to the guards beside them, each read in its own turn)."""
        own = [m.content for m in self.messages] if self.messages is not None else [self.text or ""]
        return [*super()._caller_texts(data), *own]

    async def _render(self, name: str, data: CompleteRequest) -> Rendering:
        if self.target.kind == "config":
            config = await self.resolve_config(self.target)
            return direct_rendering(config, messages=self.messages, text=self.text)
        if data.unit is not None and data.version is None:
            # Routing the unit records its exposure: a request of the other kind (which an experiment's variants
            # share with production) is refused before it, unrouted, as it reaches no variant.
            unrouted = await self.catalog.resolve(name, label=data.label)
            self._check_kind(name, chat=unrouted.version.kind == "chat")
        rendering = await super()._render(name, data)
        out = rendering.out
        self._check_kind(name, chat=out.messages is not None)
        if self.messages is not None:
            assert out.messages is not None
            out = msgspec.structs.replace(out, messages=[*out.messages, *self.messages])
        else:
            out = msgspec.structs.replace(out, text=(out.text or "") + (self.text or ""))
        return Rendering(out, rendering.resolution)

    def _check_kind(self, name: str, *, chat: bool) -> None:
        """Refuse a chat prompt on ``/v1/completions`` and a text prompt on ``/v1/chat/completions``."""
        if self.messages is not None and not chat:
            raise PromptKindMismatchError(
                f"prompt '{name}' is a text prompt; run it with POST /v1/completions",
                errors=[FieldError("model", "names a text prompt")],
            )
        if self.messages is None and chat:
            raise PromptKindMismatchError(
                f"prompt '{name}' is a chat prompt; run it with POST /v1/chat/completions",
                errors=[FieldError("model", "names a chat prompt")],
            )


@dataclass(frozen=True, slots=True)
class OpenAICall:
    """One request, ready to run: the service and what it was asked."""

    service: OpenAICompletions
    name: str
    request: CompleteRequest
    model: str
    chat: bool
    include_usage: bool
    id: str
    created: int


def prepare_call(
    completions: Completions,
    catalog: PromptCatalog,
    resolve_config: ConfigResolver,
    data: ChatCompletionRequest | TextCompletionRequest,
    *,
    request_id: str | None,
) -> OpenAICall:
    target = parse_model(data.model)
    request = complete_request(target, data)
    messages, names, text = None, None, None
    if isinstance(data, ChatCompletionRequest):
        messages = [Message(role=m.role, content=m.text) for m in data.messages]
        if any(m.name is not None for m in data.messages):
            names = [m.name for m in data.messages]
    else:
        text = data.text
    chat = messages is not None
    service = OpenAICompletions(
        completions, catalog, target=target, resolve_config=resolve_config, messages=messages, names=names, text=text
    )
    prefix = "chatcmpl-" if chat else "cmpl-"
    return OpenAICall(
        service=service,
        name=target.name,
        request=request,
        model=data.model,
        chat=chat,
        include_usage=data.include_usage,
        id=prefix + (request_id or uuid.uuid4().hex),
        created=int(time.time()),
    )


# --------------------------------------------------------------------------- the answers


def registry_facts(meta: CompletionMeta, cost: float | None = None) -> RegistryFacts:
    return RegistryFacts(
        prompt=meta.prompt or None,
        version=meta.version or None,
        config=meta.config,
        experiment=meta.experiment,
        fallback_used=meta.fallback_used,
        cached=meta.cached,
        cost=cost,
        similarity=meta.similarity,
    )


def registry_headers(meta: CompletionMeta, cost: float | None = None) -> dict[str, str]:
    """The registry's facts as ``X-Registry-*`` headers (a stream's cost comes in its last chunk)."""
    headers = {
        "X-Registry-Config": meta.config.name,
        "X-Registry-Config-Version": str(meta.config.version),
        "X-Registry-Fallback-Used": "true" if meta.fallback_used else "false",
        "X-Registry-Cached": "semantic" if meta.cached == "semantic" else "true" if meta.cached else "false",
        **experiment_headers(meta.experiment),
    }
    if meta.prompt:
        headers["X-Registry-Prompt"] = meta.prompt
        headers["X-Registry-Prompt-Version"] = str(meta.version)
    if cost is not None:
        headers["X-Registry-Cost"] = repr(cost)
    return headers


def _usage(done: CompletionOut | DoneEvent) -> Usage:
    return Usage(
        prompt_tokens=done.usage.input_tokens,
        completion_tokens=done.usage.output_tokens,
        total_tokens=done.usage.total_tokens,
    )


def completion_answer(call: OpenAICall, out: CompletionOut) -> ChatCompletion | TextCompletion:
    facts = registry_facts(out, out.cost)
    finish_reason = out.finish_reason or "stop"
    if call.chat:
        return ChatCompletion(
            id=call.id,
            created=call.created,
            model=call.model,
            choices=[ChatChoice(index=0, message=AssistantMessage(content=out.text), finish_reason=finish_reason)],
            usage=_usage(out),
            registry=facts,
        )
    return TextCompletion(
        id=call.id,
        created=call.created,
        model=call.model,
        choices=[TextChoice(index=0, text=out.text, finish_reason=finish_reason)],
        usage=_usage(out),
        registry=facts,
    )


def error_answer(error: RegistryError, *, instance: str | None, request_id: str | None) -> ErrorOut:
    """OpenAI's error object for a registry problem: ``type`` is the problem's type, and so is ``code`` but for a
    model there is no version of (``openai_code``)."""
    return ErrorOut(
        error=ErrorDetail(
            message=error.detail,
            type=error.type,
            param=error.errors[0].field if error.errors else None,
            code=openai_code(error.type),
            # The path may name the model (GET /v1/models/{model}): no more of it than of the name in the message.
            problem=problem_body(error, instance=instance and echoed(instance), request_id=request_id),
        )
    )


_encode = msgspec.json.Encoder().encode
DONE = b"data: [DONE]\n\n"


class ChunkEncoder:
    """The bytes of one stream's chunks; what surrounds the text is encoded once, when the stream starts."""

    def __init__(self, call: OpenAICall) -> None:
        self.call = call
        kind = b"chat.completion.chunk" if call.chat else b"text_completion"
        self.head = (
            b'data: {"id":'
            + _encode(call.id)
            + b',"object":"'
            + kind
            + b'","created":'
            + str(call.created).encode()
            + b',"model":'
            + _encode(call.model)
            + b',"choices":'
        )
        if call.chat:
            self._before_text = b'[{"index":0,"delta":{"content":'
            self._after_text = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._before_text = b'[{"index":0,"text":'
            self._after_text = b',"logprobs":null,"finish_reason":null}]}\n\n'
        self._delta_head = self.head + self._before_text

    def start(self) -> bytes:
        """A chat stream opens with the assistant's role, as OpenAI's does."""
        if not self.call.chat:
            return b""
        return self.head + b'[{"index":0,"delta":{"role":"assistant","content":""}' + self._after_text[1:]

    def delta(self, text: str) -> bytes:
        return self._delta_head + _encode(text) + self._after_text

    def done(self, meta: CompletionMeta, event: DoneEvent) -> bytes:
        finish = _encode(event.finish_reason or "stop")
        empty = b'{"index":0,"delta":{}' if self.call.chat else b'{"index":0,"text":""'
        facts = _encode(registry_facts(meta, event.cost))
        last = self.head + b"[" + empty + b',"logprobs":null,"finish_reason":' + finish + b'}],"registry":' + facts
        usage = b""
        if self.call.include_usage:
            usage = self.head + b'[],"usage":' + _encode(_usage(event)) + b"}\n\n"
        return last + b"}\n\n" + usage + DONE

    @staticmethod
    def error(error: RegistryError, *, instance: str | None, request_id: str | None) -> bytes:
        """A failure after the first token: OpenAI's error object as the last event (the SDKs raise it)."""
        return b"data: " + _encode(error_answer(error, instance=instance, request_id=request_id)) + b"\n\n"


class OpenAIChunks:
    """One stream's events as OpenAI's chunks (a ``StreamEncoder``): ``encoder``'s, with the stream's facts."""

    __slots__ = ("_encoder", "_instance", "_meta", "_request_id", "delta")

    def __init__(
        self, encoder: ChunkEncoder, meta: CompletionMeta, *, instance: str | None, request_id: str | None
    ) -> None:
        self.delta = encoder.delta  # made for every token: the encoder's own, called without a step between
        self._encoder = encoder
        self._meta = meta
        self._instance = instance
        self._request_id = request_id

    def done(self, event: DoneEvent) -> bytes:
        return self._encoder.done(self._meta, event)

    def error(self, error: RegistryError) -> bytes:
        """The failure's error object, logged as the same failure before the first token is (and as
        ``/complete``'s ``error`` event is): its request id, which the caller gets, finds it in the log."""
        translated = translate_and_log(error, self._instance or "")
        return self._encoder.error(translated, instance=self._instance, request_id=self._request_id)


# --------------------------------------------------------------------------- the models a key may call


def epoch_seconds(moment: datetime) -> int:
    return calendar.timegm(moment.utctimetuple())


class ModelListing:
    """One model a key may call, as ``models.retrieve`` reads it (the list is ``model_list.ModelPages``'s)."""

    def __init__(self, session: AsyncSession) -> None:
        self.prompts = PromptRepository(session)
        self.configs = ConfigRepository(session)
        self._workflows: dict[str, VersionWorkflow[Any, Any, Any]] = {
            "prompt": VersionWorkflow(session, self.prompts, change_kind="prompt", errors=PROMPT_ERRORS),
            "config": VersionWorkflow(session, self.configs, change_kind="config", errors=CONFIG_ERRORS),
        }

    async def model(self, model: str) -> ModelOut:
        """``model`` if a completion naming it would find its version (as ``models.retrieve`` expects), else 404."""
        target = parse_model(model)
        try:
            resource, _ = await self._workflows[target.kind].resolve(
                target.name, version=target.version, label=target.label
            )
        except NotFoundError as exc:
            cause = exc.detail.replace(target.name, echoed(target.name))  # the name again ("no prompt is named...")
            raise ModelNotFoundError(f"the model '{echoed(model)}' does not exist: {cause}") from exc
        return ModelOut(id=model, created=epoch_seconds(resource.created_at), owned_by=OWNER)
