"""Completions: render a prompt, run it on its config's backend, record what it used.

The request path never touches the database: the prompt comes from the
catalog's cache, budgets from their cache, and usage goes to a buffer that a
periodic job writes.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.models import ApiKey
from registry.auth.principal import Actor
from registry.auth.service import ApiKeyNotFoundError
from registry.completions.budgets import BudgetGuard, Reservation
from registry.completions.cache import CachedCompletion
from registry.completions.components import Completions
from registry.completions.errors import (
    BackendBusyError,
    BackendNotConfiguredError,
    CircuitOpenError,
    ContextLengthExceededError,
    NoModelConfigError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from registry.completions.models import ApiKeyBudget
from registry.completions.payload import (
    Overrides,
    build_payload,
    cache_key,
    context_problem,
    is_deterministic,
    named_turns,
    override_problems,
    token_upper_bound,
    turn_text,
    upstream_path,
)
from registry.completions.policy import BreakerStatus
from registry.completions.pricing import completion_cost, month_start
from registry.completions.redaction import redact
from registry.completions.repository import CompletionRepository
from registry.completions.schemas import (
    BudgetOut,
    CompleteRequest,
    CompletionMeta,
    CompletionOut,
    ConfigRun,
    DeltaEvent,
    DoneEvent,
    SetBudget,
    UsageOut,
    UsageRow,
)
from registry.completions.semantic_cache import SemanticProbe
from registry.completions.upstream import Backend, UpstreamStream
from registry.db.base import utcnow
from registry.guards.classifier import VERDICT_FORMAT, classify
from registry.guards.engine import (
    ContentBlockedError,
    Guarding,
    caller_texts,
    compile_guards,
    fallback_guards,
    guard_columns,
)
from registry.lib.changes import Change, record_change
from registry.lib.errors import InvalidInputError, RegistryError
from registry.lib.schema import Output
from registry.lib.tracing import (
    annotate_current_span,
    config_attributes,
    gen_ai_request_attributes,
    gen_ai_usage_attributes,
    outcome_attributes,
)
from registry.prompts.catalog import PromptCatalog, Rendering
from registry.prompts.schemas import LinkedConfig, RenderOut
from registry.prompts.traced import rendered_attributes, traced_render

logger = structlog.get_logger("registry.completions")

# Failures of the backend side: recorded as errored completions. Input errors are not recorded, unless the run's
# earlier attempts spent tokens first (``CompletionService._refused``).
RECORDED_ERRORS = (UpstreamError, CircuitOpenError, BackendBusyError, BackendNotConfiguredError)
# Failures after which the config's fallback is tried (nothing was streamed yet).
FALLBACK_ERRORS = (CircuitOpenError, UpstreamTimeoutError, UpstreamUnavailableError)


@dataclass(frozen=True, slots=True)
class Caller:
    key: str | None  # the API key's public id
    request_id: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    """One config's upstream request for a rendering."""

    config: LinkedConfig
    backend: Backend
    payload: dict[str, Any]
    path: str


@dataclass(frozen=True, slots=True)
class Spend:
    """Tokens a backend generated for a request, and their cost at the prices of the config that ran."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens, self.cost + other.cost
        )


@dataclass(slots=True)
class Run:
    """What one completion request did, filled in as it goes and recorded once at the end."""

    rendering: Rendering
    caller: Caller
    stream: bool
    plan: Plan
    unit: str | None = None
    started: float = field(default_factory=time.monotonic)
    fallback_used: bool = False
    cached: bool = False
    similarity: float | None = None  # a semantic cache hit's
    semantic: SemanticProbe | None = None  # the semantic cache's lookup, where the answer is kept on a miss
    # The config's guards (registry.guards) and what they did; its fallback's too once that serves.
    guarding: Guarding | None = None
    status: str = "cancelled"
    error_type: str | None = None
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    ttft: float | None = None
    latency: float | None = None
    parts: list[str] = field(default_factory=list)
    sent: bool = False  # a backend took the attempt under way: it reads the prompt from then on
    # Input tokens the failed attempts on the run's config reported (``attempt_failed``), and how many of them a
    # backend took without reporting any: each read the prompt all the same, counted once the run ends (``unread``).
    reported_input: int = 0
    unreported: int = 0
    streamed: bool = False  # the attempt under way or last sent its first token (``absorb``)
    recorded: bool = False
    # What an attempt given up mid-answer generated (its fallback answered instead): spent all the same, at the
    # prices of its config (``set_aside_config``), under which usage by config counts it.
    set_aside: Spend = field(default_factory=Spend)
    set_aside_config: LinkedConfig | None = None
    set_aside_plan: Plan | None = None
    set_aside_unreported: int = 0  # its attempts a backend took without reporting usage (``unread``)
    # The type of the failure that made the run fail over (``circuit_open``: the first backend's open breaker refused
    # it): its record keeps it beside the backend that failed, for rules by backend (``error_type`` is the last one).
    first_error_type: str | None = None
    reservation: Reservation | None = None  # held against the key's budget until the run is recorded

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def spend(self) -> Spend:
        """Every token the request had a backend generate; for a cache hit, the cached answer's."""
        config = self.plan.config
        cost = completion_cost(
            self.input_tokens,
            self.output_tokens,
            input_price_per_mtok=config.input_price_per_mtok,
            output_price_per_mtok=config.output_price_per_mtok,
        )
        return self.set_aside + Spend(self.input_tokens, self.output_tokens, cost)

    def cost_of(self, spend: Spend) -> float:
        """What the caller is charged for ``spend`` (this run's): nothing for a cache hit."""
        return 0.0 if self.cached else round(spend.cost, 12)

    def accepted(self) -> None:
        """A backend took the request (``UpstreamClient.open_stream``): it reads the prompt from here on."""
        self.sent = True

    def attempt_failed(self, input_tokens: int, output_tokens: int) -> None:
        """An attempt failed before its first token (``UpstreamClient.open_stream``); ``input_tokens`` and
        ``output_tokens`` are what the run's attempts on this config reported so far. Kept as they come, not only
        from the error that ends the run: a caller who leaves during the retry, or a retry refused as too long
        (``ContextLengthExceededError``, which carries none), is charged them all the same. An attempt the backend
        took without reporting its prompt read it anyway: its prompt is counted when the run ends (``unread``)."""
        if self.sent and input_tokens == self.reported_input:
            self.unreported += 1
        self.sent = False  # the retry has not been taken yet
        self.input_tokens = self.reported_input = input_tokens
        self.output_tokens = output_tokens

    def unreported_attempts(self, *, left: bool = False) -> int:
        """The attempts on the run's config a backend took and reported no usage for: the failed ones, and the one
        under way or last if it ended before its first token (timed out, say) or was ``left`` by the caller. One
        that broke off after its first token with no usage (a backend that reports it only at the end) is charged
        what it reported."""
        unread = self.sent and self.input_tokens == self.reported_input and (left or not self.streamed)
        return self.unreported + unread

    def unread(self) -> list[tuple[Plan, int]]:
        """The plans whose prompts a backend read without reporting them, and how many times each: charged once
        counted (``registry.completions.prefill``). The config set aside (``set_aside_attempt``) comes first."""
        now = self.unreported_attempts(left=self.status == "cancelled")
        plans = [(self.set_aside_plan, self.set_aside_unreported), (self.plan, now)]
        return [(plan, times) for plan, times in plans if plan is not None and times]

    def charge_unread(self, unread: Sequence[tuple[Plan, int]], counts: Sequence[int]) -> None:
        """Charge each of ``unread``'s prompts (``count`` tokens) as often as a backend read it, at its config's
        prices; the set-aside config's part stays in ``set_aside``."""
        for (plan, times), count in zip(unread, counts, strict=True):
            if plan is self.plan:
                self.input_tokens += times * count
                continue
            config, tokens = plan.config, times * count
            cost = completion_cost(
                tokens,
                0,
                input_price_per_mtok=config.input_price_per_mtok,
                output_price_per_mtok=config.output_price_per_mtok,
            )
            self.set_aside += Spend(tokens, 0, cost)

    def set_aside_attempt(self, error_type: str) -> None:
        """Start the answer again on another config, after a failure of ``error_type``: the text goes, what it cost
        stays charged."""
        self.first_error_type = error_type
        self.set_aside = self.spend()
        self.set_aside_config = self.plan.config
        self.set_aside_plan, self.set_aside_unreported = self.plan, self.unreported_attempts()
        self.input_tokens = self.output_tokens = self.reported_input = self.unreported = 0
        self.sent = self.streamed = False  # the next backend has not taken it yet
        self.finish_reason = None
        self.parts.clear()

    def spent_any(self) -> bool:
        """Whether any attempt so far spent tokens: reported, or a prompt a backend took (``unread``)."""
        spend = self.spend()
        return bool(spend.input_tokens or spend.output_tokens or self.unread())

    def absorb_failure(self, error: UpstreamError) -> None:
        """The attempt failed before its first token: what its backend reported spending (a prefill) is charged."""
        self.input_tokens, self.output_tokens = error.input_tokens, error.output_tokens

    def absorb(self, upstream: UpstreamStream) -> None:
        self.streamed = True
        self.finish_reason = upstream.finish_reason
        self.input_tokens = upstream.input_tokens
        self.output_tokens = upstream.output_tokens
        if upstream.ttft is not None:
            self.ttft = upstream.started + upstream.ttft - self.started

    def usage(self, spend: Spend | None = None) -> UsageOut:
        if spend is None:
            spend = self.spend()
        return UsageOut(
            input_tokens=spend.input_tokens,
            output_tokens=spend.output_tokens,
            total_tokens=spend.input_tokens + spend.output_tokens,
        )


# A stream's events: metadata, deltas and done are schemas; a failure after the first token is the error itself.
StreamEvents = AsyncGenerator[tuple[str, Output | RegistryError], None]
Part = TypeVar("Part")
Part_co = TypeVar("Part_co", covariant=True)


class StreamEncoder(Protocol[Part_co]):
    """What a stream's events become: the doors' bytes, or the schemas themselves (``EventTuples``).

    The relay makes each part with it as the event comes, so the text of a delta goes into the
    caller's bytes without an event object or another generator between them.
    """

    def delta(self, text: str) -> Part_co: ...

    def done(self, event: DoneEvent) -> Part_co: ...

    def error(self, error: RegistryError) -> Part_co: ...


class EventTuples:
    """The events as ``(name, schema)``, and a failure after the first token as the error itself."""

    @staticmethod
    def delta(text: str) -> tuple[str, Output | RegistryError]:
        return "delta", DeltaEvent(text=text)

    @staticmethod
    def done(event: DoneEvent) -> tuple[str, Output | RegistryError]:
        return "done", event

    @staticmethod
    def error(error: RegistryError) -> tuple[str, Output | RegistryError]:
        return "error", error


@dataclass(frozen=True, slots=True)
class CompletionStream:
    """A started completion: its metadata, and its events made with any encoder, once.

    Until ``encoded`` (or ``events``) is called and its generator started, nothing reads the upstream
    stream; a started generator that is dropped is closed by asyncio, which closes the upstream. One
    that is never started holds the backend's slot and the key's budget hold until ``discard``, which a
    holder of streams that may never be read (the playground's sides) calls however it ends.
    """

    meta: CompletionMeta
    source: Callable[[StreamEncoder[Any]], AsyncGenerator[Any, None]]
    discard: Callable[[], Awaitable[None]]

    def encoded(self, encoder: StreamEncoder[Part]) -> AsyncGenerator[Part, None]:
        return self.source(encoder)

    @property
    def events(self) -> StreamEvents:
        return self.source(EventTuples())


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _payload(
    config: LinkedConfig, out: RenderOut, overrides: Overrides, names: Sequence[str | None] = ()
) -> dict[str, Any]:
    """The upstream request of ``out`` on ``config``, the caller's turns named by ``names`` (``named_turns``); a
    config's lower max_tokens caps the caller's."""
    configured = config.params.get("max_tokens")
    if overrides.max_tokens is not None and configured is not None and overrides.max_tokens > configured:
        overrides = Overrides(configured, overrides.seed, overrides.user)  # a fallback's lower limit wins
    messages = [{"role": m.role, "content": m.content} for m in out.messages] if out.messages else None
    return build_payload(
        model=config.model,
        text=out.text,
        messages=named_turns(messages, names) if messages is not None else None,
        params=config.params,
        overrides=overrides,
    )


def _prompt_text(out: RenderOut, names: Sequence[str | None] = ()) -> str:
    if out.messages is not None:
        turns = named_turns([{"role": m.role, "content": m.content} for m in out.messages], names)
        return "\n".join(turn_text(m["role"], m["content"], m.get("name")) for m in turns)
    return out.text or ""


class CompletionService:
    # The participants' names of the caller's turns, the last of the rendered messages (the OpenAI door's; None: a
    # turn without one), sent with them; the input guards' redactions replace them (``_guard_input``).
    names: Sequence[str | None] = ()

    def __init__(self, completions: Completions, catalog: PromptCatalog, *, config: LinkedConfig | None = None) -> None:
        self.completions = completions
        self.upstream = completions.upstream
        self.catalog = catalog
        self.tracer = completions.upstream.tracing.tracer  # None when tracing is off
        # The config version every completion runs with in place of the rendered version's (an evaluation
        # run's, the playground's choice); None: the version's own, or its experiment variant's.
        self.config = config

    # -- preparing

    async def _prepare(self, name: str, data: CompleteRequest, caller: Caller) -> tuple[Run, Overrides]:
        if caller.key is not None:
            await self.completions.budgets.check(caller.key)
        rendering = await self._render(name, data)
        config = self.config or rendering.resolution.config  # chosen here, so the plan is made once
        if config is None:
            raise NoModelConfigError(
                f"prompt '{name}' version {rendering.out.version} links no model config; link one to run it"
            )
        overrides = Overrides(max_tokens=data.max_tokens, seed=data.seed, user=data.user)
        # Judged by the config of the version the caller addressed: the one an experiment routed the unit to
        # instead caps them in ``_plan``, as a fallback's does, so a unit's arm never decides whether it is refused.
        addressed = self.config or rendering.resolution.addressed_config or config
        problems = override_problems(addressed.params, overrides)
        if problems:
            raise InvalidInputError("the overrides are not allowed by the model config", errors=problems)
        plan = self._plan(config, rendering.out, overrides)
        run = Run(rendering=rendering, caller=caller, stream=data.stream, plan=plan, unit=self._unit_of(data))
        await self._guard_input(run, data, overrides)
        return run, overrides

    def _unit_of(self, data: CompleteRequest) -> str | None:
        """The unit whose data the run's record and cached answers are (listed and erased with it): the one it
        is routed by (``_render``)."""
        return data.unit

    classifying = False  # a model guard's classifier (ClassifierCompletions): model guards on its config are refused

    def _caller_texts(self, data: CompleteRequest) -> list[str]:
        """What the caller wrote, for the injection and delimiter guards (the OpenAI door adds its messages)."""
        return caller_texts(data.variables)

    async def _guard_input(self, run: Run, data: CompleteRequest, overrides: Overrides) -> None:
        """The config's input guards: a redaction re-plans the request, a block is recorded and raised.

        A config whose fallback has guards gets a Guarding even with none of its own: it keeps the caller's
        texts for the fallback's input guards, and the log that records them (``_use_fallback``).
        """
        config = run.plan.config
        guards = compile_guards(config.guards)
        if not guards and (config.fallback is None or not config.fallback.guards):
            return
        stores = functools.partial(self._stores, run)  # the classifier keeps text only if this run may too
        classifier = ClassifierCompletions(
            self.completions,
            self.catalog,
            unit=run.unit,
            guarded_prompt=run.rendering.out.prompt,
            guarded_stores=stores,
        )
        complete = functools.partial(classifier.complete, caller=run.caller)
        run.guarding = Guarding(
            guards,
            functools.partial(classify, self.catalog, complete),
            default_window=self.completions.settings.guard_stream_window,
            classifying=self.classifying,
        )
        try:
            out = await run.guarding.check_input(run.rendering.out, self._caller_texts(data), self.names)
        except ContentBlockedError as exc:
            self._fail(run, exc)
            raise
        renamed = run.guarding.names != list(self.names)
        if out is not run.rendering.out or renamed:
            self.names = run.guarding.names
            run.rendering = Rendering(out, run.rendering.resolution)
            run.plan = self._plan(run.plan.config, out, overrides)

    async def _guard_output(self, run: Run) -> None:
        if run.guarding is not None:
            try:
                run.parts = [await run.guarding.check_output(run.text)]
            except ContentBlockedError as exc:
                run.parts.clear()  # none of a blocked answer reached the caller, so none of it is stored
                self._fail(run, exc)
                raise

    async def _render(self, name: str, data: CompleteRequest) -> Rendering:
        """What the completion runs: the prompt rendered (the OpenAI-compatible door adds the caller's turns)."""
        return await traced_render(
            self.catalog, self.tracer, name, data.variables, label=data.label, version=data.version, unit=data.unit
        )

    def _plan(self, config: LinkedConfig, out: RenderOut, overrides: Overrides) -> Plan:
        payload = _payload(config, out, overrides, self.names)
        return Plan(config, self.upstream.backend(config.backend), payload, upstream_path(payload))

    async def _check_context(self, plan: Plan) -> None:
        """Refuse a prompt that cannot fit before calling the backend.

        Short prompts are cleared by an upper bound on their token count; only
        prompts near the limit are counted by the backend (vLLM ``/tokenize``).
        """
        configured = plan.config.max_context_tokens
        if plan.backend.breaker.state.status != BreakerStatus.CLOSED:
            return  # a failing backend cannot count; the fallback (or the error) comes sooner without asking
        limit = configured or plan.backend.model_context.get(plan.config.model)
        max_tokens = plan.payload.get("max_tokens")
        if limit is not None and context_problem(token_upper_bound(plan.payload), max_tokens, limit) is None:
            return
        try:
            count, model_limit = await self.upstream.count_prompt_tokens(plan.backend, plan.payload)
        except UpstreamError as exc:
            logger.info("could not count prompt tokens; the backend will check", error=exc.detail)
            return
        limit = configured or model_limit
        problem = context_problem(count, max_tokens, limit) if limit else None
        if problem is not None:
            raise ContextLengthExceededError(problem, prompt_tokens=count, max_context_tokens=limit)

    async def _reserve(self, run: Run, overrides: Overrides) -> None:
        """Hold the most the run may spend against its key's budget until it is recorded (``BudgetGuard.reserve``):
        its prompt's upper bound plus its max_tokens, at its config's prices. A config without max_tokens holds
        its prompt only: what the context leaves (a hundred thousand tokens, say) held for every request would
        refuse a key's parallel requests long before its budget is near.

        A config with a fallback holds the fallback's most as well, at its prices and limits: the run may be charged
        both (an answer that failed midway is charged, then run again on the fallback), and a hold at the first
        config's prices alone let a burst of requests failing over to a dearer fallback each spend past the budget."""
        if run.caller.key is None or self.classifying:  # a classifier's run is bounded by the request it guards
            return
        plan = run.plan

        def most_of(config: LinkedConfig, payload: dict[str, Any]) -> tuple[int, float]:
            prompt = token_upper_bound(payload)
            output = payload.get("max_tokens") or 0
            cost = completion_cost(
                prompt,
                output,
                input_price_per_mtok=config.input_price_per_mtok,
                output_price_per_mtok=config.output_price_per_mtok,
            )
            return prompt + output, cost

        def most() -> tuple[int, float]:
            tokens, cost = most_of(plan.config, plan.payload)
            fallback = plan.config.fallback
            if fallback is not None:
                more_tokens, more_cost = most_of(fallback, _payload(fallback, run.rendering.out, overrides, self.names))
                tokens, cost = tokens + more_tokens, cost + more_cost
            return tokens, cost

        run.reservation = await self.completions.budgets.reserve(run.caller.key, most)

    # -- running

    async def _open(self, run: Run, overrides: Overrides) -> UpstreamStream:
        try:
            return await self._start(run)
        except FALLBACK_ERRORS as exc:
            if not await self._use_fallback(run, overrides, exc):
                raise
            return await self._start_fallback(run, exc)

    async def _start(self, run: Run) -> UpstreamStream:
        plan = run.plan
        try:
            return await self.upstream.open_stream(
                plan.backend, plan.path, plan.payload, accepted=run.accepted, attempt_failed=run.attempt_failed
            )
        except UpstreamError as exc:
            run.absorb_failure(exc)
            raise

    async def _start_fallback(self, run: Run, error: RegistryError) -> UpstreamStream:
        """Start the run on the fallback it moved to after ``error``.

        A fallback whose backend finds the request too long for its context (which its check let through: the
        count came out under its limit, or could not be made) is one that cannot hold it, as in ``_use_fallback``:
        the caller gets the first backend's failure, not a 422, and the run is recorded as failed with it, so
        what the first backend spent (an answer broken off midway) is charged (an input error is not recorded).
        """
        try:
            return await self._start(run)
        except ContextLengthExceededError as exc:
            logger.warning(
                "the fallback's backend cannot hold the prompt; the first backend's failure is reported",
                fallback_backend=run.plan.backend.name,
                error=error.type,
                problem=exc.detail,
            )
            raise error from exc

    async def _use_fallback(self, run: Run, overrides: Overrides, error: RegistryError) -> bool:
        """Move the run to its config's fallback, once; False when there is none to move to.

        The fallback's plan passes the same context check as the first. A request that fits the first config's
        model but not the fallback's is not sent to the fallback: the caller gets the first backend's failure
        (a 502, 503 or 504 that a retry may cure), not a 422 ``context_length_exceeded`` telling them to shorten
        a request that the model they asked for can take.

        The fallback's guards act beside the first config's (which have read the input): its input guards read the
        input as those left it, and a block of theirs leaves the request unsent there, as above; its output guards
        screen the answer with the first config's.
        """
        fallback = run.plan.config.fallback
        if fallback is None or run.fallback_used:
            return False
        out, guarding, names = run.rendering.out, run.guarding, self.names
        if guarding is not None and fallback.guards:
            # The fallback's own guards apply too: its input guards read the input as the first config's left it.
            guarding = guarding.with_fallback(fallback_guards(fallback.guards, fallback.name, fallback.version))
            try:
                out = await guarding.check_input(out, guarding.callers, guarding.names)
            except ContentBlockedError as exc:
                logger.warning(
                    "backend failed; a guard of the fallback config blocked the request",
                    backend=run.plan.backend.name,
                    error=error.type,
                    fallback=f"{fallback.name}@{fallback.version}",
                    guard=exc.extra.get("guard"),
                )
                return False  # the block is in the run's guard log, which it shares
            names = guarding.names  # a name as the fallback's guards left it is sent there
        sent, self.names = self.names, names
        plan = self._plan(fallback, out, overrides)
        try:
            await self._check_context(plan)
        except ContextLengthExceededError as exc:
            self.names = sent  # not sent to the fallback: the record keeps the names the first backend got
            logger.warning(
                "backend failed; the fallback config cannot hold the prompt",
                backend=run.plan.backend.name,
                error=error.type,
                fallback=f"{fallback.name}@{fallback.version}",
                problem=exc.detail,
            )
            return False
        logger.warning(
            "backend failed; using the fallback config",
            backend=run.plan.backend.name,
            error=error.type,
            fallback=f"{fallback.name}@{fallback.version}",
        )
        run.set_aside_attempt(error.type)
        run.plan = plan
        run.guarding = guarding
        if out is not run.rendering.out:
            run.rendering = Rendering(out, run.rendering.resolution)
        run.fallback_used = True
        return True

    def _stores(self, run: Run) -> bool:
        """Whether the run may keep its texts: in its record, the exact cache and the semantic cache."""
        return run.rendering.resolution.entry.store_io

    def _cache_key(self, run: Run) -> str | None:
        if not self.completions.cache.enabled or not is_deterministic(run.plan.payload):
            return None
        if not self._stores(run):  # keeps no inputs and outputs (a config run: none either)
            return None
        out = run.rendering.out
        config = run.plan.config
        return cache_key(
            prompt=out.prompt,
            version=out.version,
            config=config.name,
            config_version=config.version,
            payload=run.plan.payload,
        )

    async def _from_caches(self, run: Run, key: str | None, data: CompleteRequest) -> bool:
        """Serve the run from the exact cache, else check that the request fits, else try the semantic cache.

        An exact hit is the answer to this very request (config version and all), which fitted: counting its
        prompt again would cost a backend round trip, and wait up to the first-token timeout on a hung backend,
        for an answer already in hand.
        """
        if await self._from_cache(run, key):
            return True
        await self._check_context(run.plan)
        return await self._from_semantic_cache(run, data)

    # Whether a prompt's semantic cache may answer; an evaluation run measures the model's own answers.
    semantic_cache = True
    # Other prompts whose storage policy covers the answers this service caches (a classifier's: its guarded one).
    covering: tuple[str, ...] = ()

    async def _from_semantic_cache(self, run: Run, data: CompleteRequest) -> bool:
        if not self.semantic_cache or not self._stores(run):
            return False
        plan = run.plan
        run.semantic = await self.completions.semantic.probe(
            run.rendering, plan.config, plan.payload, data.variables, unit=run.unit
        )
        if run.semantic is None or run.semantic.hit is None:
            return False
        run.similarity = run.semantic.hit.similarity
        return self._serve_cached(run, run.semantic.hit.completion)

    async def _from_cache(self, run: Run, key: str | None) -> bool:
        hit = await self.completions.cache.get(key) if key else None
        return hit is not None and self._serve_cached(run, hit)

    @staticmethod
    def _serve_cached(run: Run, hit: CachedCompletion) -> bool:
        run.cached = True
        run.status = "ok"
        run.parts = [hit.text]
        run.finish_reason = hit.finish_reason
        run.input_tokens, run.output_tokens = hit.input_tokens, hit.output_tokens
        run.ttft = run.latency = time.monotonic() - run.started
        return True

    async def _store_in_cache(self, run: Run, key: str | None) -> None:
        if run.fallback_used or (key is None and run.semantic is None):  # neither cache keeps this answer
            return
        completion = CachedCompletion(run.text, run.finish_reason, run.input_tokens, run.output_tokens)
        if key is not None:
            cache = self.completions.cache
            await cache.set(key, completion, unit=run.unit, prompt=run.rendering.out.prompt, covering=self.covering)
        await self.completions.semantic.store(run.semantic, completion)

    def _meta(self, run: Run) -> CompletionMeta:
        out, config = run.rendering.out, run.plan.config
        return CompletionMeta(
            prompt=out.prompt,
            version=out.version,
            config=ConfigRun(name=config.name, version=config.version, backend=config.backend, model=config.model),
            experiment=out.experiment,
            fallback_used=run.fallback_used,
            cached="semantic" if run.similarity is not None else run.cached,
            similarity=msgspec.UNSET if run.similarity is None else run.similarity,
        )

    def _result(self, run: Run) -> CompletionOut:
        meta = self._meta(run)
        spend = run.spend()
        return CompletionOut(
            **{name: getattr(meta, name) for name in meta.__struct_fields__},
            text=run.text,
            finish_reason=run.finish_reason,
            usage=run.usage(spend),
            cost=run.cost_of(spend),
            latency_ms=_ms(run.latency) or 0.0,
            ttft_ms=_ms(run.ttft),
        )

    def _done(self, run: Run) -> DoneEvent:
        spend = run.spend()
        return DoneEvent(
            finish_reason=run.finish_reason,
            usage=run.usage(spend),
            cost=run.cost_of(spend),
            latency_ms=_ms(run.latency) or 0.0,
            ttft_ms=_ms(run.ttft),
        )

    async def complete(self, name: str, data: CompleteRequest, caller: Caller) -> CompletionOut:
        run, overrides = await self._prepare(name, data, caller)
        key = self._cache_key(run)
        if await self._from_caches(run, key, data):
            await self._guard_output(run)  # a cached answer passes the output guards as the model's does
            self._record(run)
            return self._result(run)
        await self._reserve(run, overrides)
        try:
            upstream = await self._open(run, overrides)
            try:
                await self._collect(run, upstream)
            except UpstreamUnavailableError as exc:
                # The backend failed mid-answer, but nothing has reached the caller yet: the whole
                # completion can still run on the fallback.
                if not await self._use_fallback(run, overrides, exc):
                    raise
                await self._collect(run, await self._start_fallback(run, exc))
            await self._guard_output(run)
            run.status = "ok"
        except RECORDED_ERRORS as exc:
            self._fail(run, exc)
            raise
        except ContextLengthExceededError as exc:
            self._refused(run, exc)  # the backend found the input too long (as on a stream)
            raise
        except Exception as exc:
            self._fail_unexpectedly(run, exc)
            raise
        except BaseException:
            self._record(run)  # the caller went away: cancelled
            raise
        self._record(run)
        await self._store_in_cache(run, key)
        return self._result(run)

    @staticmethod
    async def _collect(run: Run, upstream: UpstreamStream) -> None:
        """Read a whole upstream answer into the run."""
        try:
            async for text in upstream.texts():
                run.parts.append(text)
        finally:
            run.absorb(upstream)
            await upstream.close()

    async def open_stream(self, name: str, data: CompleteRequest, caller: Caller) -> CompletionStream:
        """Prepare and start a completion; errors until the first token are raised here, as problems."""
        run, overrides = await self._prepare(name, data, caller)
        key = self._cache_key(run)
        if await self._from_caches(run, key, data):
            await self._guard_output(run)  # whole, before the replay: a block is a problem, not an error event
            return CompletionStream(
                self._meta(run), functools.partial(self._replay, run), functools.partial(self._discard, run, None)
            )
        await self._reserve(run, overrides)
        try:
            upstream = await self._open(run, overrides)
        except RECORDED_ERRORS as exc:
            self._fail(run, exc)
            raise
        except asyncio.CancelledError:
            self._record(run)  # the caller went away before the first token
            raise
        except ContextLengthExceededError as exc:
            self._refused(run, exc)
            raise
        except Exception as exc:
            self._fail_unexpectedly(run, exc)
            raise
        return CompletionStream(
            self._meta(run),
            functools.partial(self._relay, run, upstream, key),
            functools.partial(self._discard, run, upstream),
        )

    async def _discard(self, run: Run, upstream: UpstreamStream | None) -> None:
        """End a run whose events may never have been read: recorded as cancelled, its upstream closed.
        Nothing more once they were read to the end (recorded, closed) or closed."""
        if not run.recorded:
            if upstream is not None:
                run.absorb(upstream)
            self._record(run)
        if upstream is not None:
            await upstream.close()

    async def _replay(self, run: Run, encoder: StreamEncoder[Part]) -> AsyncGenerator[Part, None]:
        self._record(run)
        yield encoder.delta(run.text)
        yield encoder.done(self._done(run))

    async def _relay(
        self, run: Run, upstream: UpstreamStream, key: str | None, encoder: StreamEncoder[Part]
    ) -> AsyncGenerator[Part, None]:
        """Token deltas as they come; a failure after the first token becomes an ``error`` event."""
        delta, parts = encoder.delta, run.parts  # used for every token: looked up once
        try:
            # Output guards hold back a window of the text and release what they let through (registry.guards).
            async for text in run.guarding.screen(upstream.texts()) if run.guarding else upstream.texts():
                parts.append(text)
                yield delta(text)
            run.status = "ok"
            run.absorb(upstream)
            self._record(run)
            await self._store_in_cache(run, key)
            yield encoder.done(self._done(run))
        except (UpstreamError, ContentBlockedError) as exc:
            run.absorb(upstream)
            self._fail(run, exc)
            yield encoder.error(exc)
        except Exception as exc:
            # A defect of ours after the first token: logged and recorded, and the stream ends with an error
            # event as for the backend's failures, not torn off mid-body.
            logger.exception("a completion stream failed")
            run.absorb(upstream)
            self._fail_unexpectedly(run, exc)
            yield encoder.error(RegistryError("an unexpected error occurred; the request id identifies it in the logs"))
        finally:
            # A client that went away lands here (cancelled): record, then close the upstream connection.
            await self._discard(run, upstream)

    # -- recording

    def _fail(self, run: Run, error: RegistryError) -> None:
        run.status = "blocked" if isinstance(error, ContentBlockedError) else "error"
        run.error_type = error.type
        self._record(run)

    def _refused(self, run: Run, error: ContextLengthExceededError) -> None:
        """The backend found the input too long: an input error, not recorded, and the key's hold is released.

        Unless an earlier attempt of the run spent tokens (it failed after the backend reported the prompt, and its
        retry was refused): those are charged, so the run is recorded as failed with the refusal's type, and they
        reach the key's budget and usage by config as any failed run's do.
        """
        if run.spent_any():
            self._fail(run, error)
        else:
            self.completions.budgets.release(run.reservation)

    def _fail_unexpectedly(self, run: Run, error: Exception) -> None:
        """Any other failure (a defect of ours, say) is an error too, not a cancellation: error rates, and the
        rollout guardrails that read them, see it."""
        if not run.recorded:
            run.status = "error"
            run.error_type = error.type if isinstance(error, RegistryError) else RegistryError.type
            self._record(run)

    def _record(self, run: Run) -> None:
        if run.recorded:
            return
        run.recorded = True
        if run.latency is None:
            run.latency = time.monotonic() - run.started
        prefill = self.completions.prefill
        unread = [] if prefill is None or run.cached else run.unread()
        if prefill is not None and unread:
            # An attempt a backend took reported no usage (left or timed out during the prefill, or retried), but
            # the backend read the prompt: counted, then charged and recorded (registry.completions.prefill).
            prompts = [(plan.backend, plan.payload) for plan, _ in unread]
            prefill.count_each_then(prompts, functools.partial(self._add_counted, run, unread))
            return
        self._add(run)

    def _add_counted(self, run: Run, unread: Sequence[tuple[Plan, int]], counts: Sequence[int]) -> None:
        """Add the run's record once the prompts its backends read unreported are counted: charged, and in each
        backend's tokens as the ones it reported are (``UpstreamClient.finished``)."""
        run.charge_unread(unread, counts)
        for (plan, times), count in zip(unread, counts, strict=True):
            plan.backend.metrics.input_tokens.inc(times * count)
        self._add(run)

    def _add(self, run: Run) -> None:
        """Add the run's usage record and its metrics."""
        out, config, metrics = run.rendering.out, run.plan.config, self.completions.metrics
        experiment = out.experiment
        store = self._stores(run)
        spend = Spend() if run.cached else run.spend()  # a cache hit used no backend
        cost = run.cost_of(spend)
        # The part of it the first config's backend spent before the run failed over (``Run.set_aside``).
        first, first_config = run.set_aside, run.set_aside_config
        if run.cached or first_config is None or not (first.input_tokens or first.output_tokens or first.cost):
            first, first_config = Spend(), None
        first_cost = run.cost_of(first)
        # The backend tried first, on every run that failed over (``first_config`` only names one that spent tokens).
        tried = run.set_aside_config
        self.completions.recorder.add(
            {
                "created_at": utcnow(),
                "request_id": run.caller.request_id,
                "prompt": out.prompt,
                "prompt_version": out.version or None,  # 0: a config run without a prompt
                "config": config.name,
                "config_version": config.version,
                "backend": config.backend,
                "model": config.model,
                "experiment_key": experiment.key if experiment else None,
                "experiment_phase": experiment.phase if experiment else None,
                "variant": experiment.variant if experiment else None,
                "unit": run.unit,
                "api_key_id": run.caller.key,
                "stream": run.stream,
                "status": run.status,
                "error_type": run.error_type,
                "finish_reason": run.finish_reason,
                "input_tokens": spend.input_tokens,
                "output_tokens": spend.output_tokens,
                "cost": cost,
                "latency_ms": _ms(run.latency),
                "ttft_ms": _ms(run.ttft),
                "fallback_used": run.fallback_used,
                "first_config": first_config.name if first_config else None,
                "first_config_version": first_config.version if first_config else None,
                "first_input_tokens": first.input_tokens,
                "first_output_tokens": first.output_tokens,
                "first_cost": first_cost,
                "first_backend": tried.backend if tried else None,
                "first_error_type": run.first_error_type,
                "cached": run.cached,
                "guard_check": self.classifying,  # a model guard's: no completion of the unit in experiment metrics
                "cache_similarity": run.similarity,
                "prompt_text": redact(_prompt_text(out, self.names)) if store else None,
                "completion_text": redact(run.text) if store and run.parts else None,
                **guard_columns(run.guarding),
            }
        )
        self.completions.budgets.release(run.reservation)  # its spend is in the recorder's count from here on
        if run.guarding is not None:
            metrics.count_guard_outcomes(run.guarding.log.outcomes)
        metrics.completions.labels(run.status, str(run.cached).lower(), str(run.fallback_used).lower()).inc()
        if run.error_type:
            metrics.errors.labels(run.error_type).inc()
        if first_config is not None and first_cost:
            metrics.cost.labels(first_config.backend).inc(first_cost)  # each backend's part under its name
        if cost - first_cost > 0:
            metrics.cost.labels(config.backend).inc(cost - first_cost)
        if self.tracer is not None:
            self._annotate(run, spend, cost)

    @staticmethod
    def _annotate(run: Run, spend: Spend, cost: float) -> None:
        """The completion on the request's span: GenAI conventions plus prompt, config and experiment."""
        out, plan = run.rendering.out, run.plan
        annotate_current_span(
            {
                **gen_ai_request_attributes(plan.path, plan.payload),
                **gen_ai_usage_attributes(spend.input_tokens, spend.output_tokens, run.finish_reason),
                **rendered_attributes(out),
                **config_attributes(config=plan.config.name, version=plan.config.version, backend=plan.config.backend),
                **outcome_attributes(
                    status=run.status,
                    error_type=run.error_type,
                    cached=run.cached,
                    fallback_used=run.fallback_used,
                    cost=cost,
                ),
            }
        )


class ClassifierCompletions(CompletionService):
    """A model guard's classifier prompt on the completion path, answering in the verdict's JSON schema.

    What it reads is the guarded request's text (or its answer), so its record and cached answers are the
    guarded request's unit's data: they carry ``unit``, and are listed and erased with it. The classifier
    prompt is not routed by that unit (its request names none): no experiment or rollout assigns or exposes it.
    """

    classifying = True
    # A verdict is on one text: a similar text's (a semantic hit) would pass or block the request on another's.
    semantic_cache = False

    def __init__(
        self,
        completions: Completions,
        catalog: PromptCatalog,
        *,
        unit: str | None,
        guarded_prompt: str,
        guarded_stores: Callable[[], bool],
    ) -> None:
        super().__init__(completions, catalog)
        self.unit = unit
        self.guarded_stores = guarded_stores  # whether the guarded request may keep its texts (its prompt's store_io)
        # A verdict is on the guarded prompt's text: it goes with that prompt's entries when its store_io goes off.
        self.covering = (guarded_prompt,) if guarded_prompt else ()

    def _unit_of(self, data: CompleteRequest) -> str | None:
        return self.unit

    def _stores(self, run: Run) -> bool:
        """The stricter of the classifier prompt's store_io and the guarded request's: what it read is that text."""
        return super()._stores(run) and self.guarded_stores()

    def _plan(self, config: LinkedConfig, out: RenderOut, overrides: Overrides) -> Plan:
        plan = super()._plan(config, out, overrides)
        plan.payload.setdefault("response_format", VERDICT_FORMAT)
        return plan


class UsageService:
    def __init__(self, session: AsyncSession, completions: Completions) -> None:
        self.repository = CompletionRepository(session)
        self.recorder = completions.recorder
        self.prefill = completions.prefill

    async def report(
        self,
        group_by: Sequence[str],
        *,
        since: datetime,
        until: datetime,
        prompt: str | None,
        key: str | None,
        limit: int,
        among: tuple[str, Sequence[str | None]] | None = None,
        excluding: bool = False,
        flush: bool = True,
    ) -> tuple[list[UsageRow], bool]:
        """Aggregates over the window; this process's buffered records are written first.

        A completion that ended with a prompt its backend took but reported no usage for is recorded once the prompt
        is counted (``PrefillCounter``, each count bounded by its backend's first-token timeout): the counts under
        way are waited for, so a report includes every completion this process has ended.

        ``among`` and ``excluding`` narrow it to some prompts or keys, or to all others (``aggregate``).
        ``flush=False`` for the further reports of one request: the flush takes a connection of its own,
        so it must come before the request's session holds one.
        """
        if flush:
            if self.prefill is not None:
                await self.prefill.settled()
            await self.recorder.flush()
        rows = await self.repository.aggregate(
            group_by,
            since=since,
            until=until,
            prompt=prompt,
            key=key,
            limit=limit + 1,
            among=among,
            excluding=excluding,
        )
        items = [
            UsageRow(
                **{
                    **row,
                    "cost": float(row["cost"]),
                    "mean_latency_ms": None
                    if row["mean_latency_ms"] is None
                    else round(float(row["mean_latency_ms"]), 3),
                    "mean_ttft_ms": None if row["mean_ttft_ms"] is None else round(float(row["mean_ttft_ms"]), 3),
                }
            )
            for row in rows[:limit]
        ]
        return items, len(rows) > limit


class BudgetService:
    def __init__(self, session: AsyncSession, budgets: BudgetGuard) -> None:
        self.session = session
        self.repository = CompletionRepository(session)
        self.budgets = budgets

    async def get(self, public_id: str) -> BudgetOut:
        key = await self.repository.get_key(public_id)
        if key is None:
            raise ApiKeyNotFoundError(f"no API key has id '{public_id}'")
        budget = await self.repository.get_budget(key.id)
        return await self._out(public_id, budget)

    async def budgeted(self, keys: Sequence[ApiKey]) -> list[BudgetOut]:
        """The budgets and spend of those of ``keys`` that have a budget: one query, then each key's spend."""
        public_ids = {key.id: key.public_id for key in keys}
        budgets = await self.repository.budgets_of(list(public_ids))
        return [await self._out(public_ids[budget.api_key_id], budget) for budget in budgets]

    async def set(self, public_id: str, data: SetBudget, actor: Actor) -> BudgetOut:
        key = await self.repository.get_key(public_id)
        if key is None:
            raise ApiKeyNotFoundError(f"no API key has id '{public_id}'")
        budget = await self.repository.get_budget(key.id)
        before = (
            None if budget is None else {"monthly_tokens": budget.monthly_tokens, "monthly_cost": budget.monthly_cost}
        )
        if data.monthly_tokens is None and data.monthly_cost is None:
            if budget is not None:
                await self.repository.delete_budget(budget)
            budget = None
        else:
            budget = budget or ApiKeyBudget(api_key_id=key.id)
            budget.monthly_tokens = data.monthly_tokens
            budget.monthly_cost = data.monthly_cost
            budget.updated_at = utcnow()
            budget.updated_by = actor.name
            await self.repository.save_budget(budget)
        after = (
            None if budget is None else {"monthly_tokens": budget.monthly_tokens, "monthly_cost": budget.monthly_cost}
        )
        await AuditLog(self.session).record(actor, "api_key.budget", "api_key", public_id, before=before, after=after)
        record_change(self.session, Change("api_key", public_id, "budget_changed"))
        return await self._out(public_id, budget)

    async def _out(self, public_id: str, budget: ApiKeyBudget | None) -> BudgetOut:
        tokens, cost = await self.budgets.spend(public_id, session=self.session)
        return BudgetOut(
            key=public_id,
            monthly_tokens=budget.monthly_tokens if budget else None,
            monthly_cost=budget.monthly_cost if budget else None,
            used_tokens=tokens,
            used_cost=round(cost, 9),
            month_start=month_start(utcnow()),
        )
