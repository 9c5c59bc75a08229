"""The read fast path: resolve and render prompts from an in-process cache.

A prompt is loaded with one query (its production, staging and latest versions
with their configs), compiled once, and its resolve response encoded once. A
change published on the bus drops the entry here and on every replica. Entries
past their lifetime are re-read; if the database cannot be reached then, the
old entry keeps being served, marked stale, so apps keep working.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import structlog
from prompt_registry_client.templating import (
    ChatMessage,
    CompiledPrompt,
    RenderError,
    RenderLimits,
    VariablesInvalidError,
    compile_prompt,
    repeatable_output,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.db.engine import READ_ONLY
from registry.lib.changes import Change, ChangeBus
from registry.lib.errors import DatabaseUnavailableError, translate_exception
from registry.lib.promotion import State
from registry.lib.single_flight import SingleFlight
from registry.lib.versioned import LabelNotSetError
from registry.prompts.errors import (
    PromptNotFoundError,
    PromptVersionNotFoundError,
    RenderFailedError,
    VariablesInvalidHttpError,
)
from registry.prompts.models import Prompt, PromptVersion
from registry.prompts.repository import PromptCatalogRepository
from registry.prompts.schemas import (
    ConfigUsed,
    ExperimentOut,
    Labels,
    LinkedConfig,
    Message,
    PromptVersionOut,
    RenderOut,
    ResolvedPromptOut,
)

logger = structlog.get_logger("registry.prompts.catalog")

_NEGATIVE_TTL = 2.0
_PRODUCTION = State.PRODUCTION.value  # read per request: the enum's value property costs more than the check
_MAX_VERSIONS_PER_ENTRY = 64
# Renders kept for reuse (see PromptCatalog._rendered): how many, and the most characters of variables and of
# output one may hold, so the cache stays under a few megabytes and long texts (a user's question) skip it.
_MAX_KEPT_RENDERS = 1024
_MAX_KEPT_VARIABLE_CHARS = 1024
_MAX_KEPT_OUTPUT_CHARS = 8192
_REUSE_TRIAL = 64

Rendered = str | list[ChatMessage]
RenderKey = tuple[tuple[str, str], ...]


def render_key(variables: Mapping[str, Any]) -> RenderKey | None:
    """What identifies a render's variables for reuse: only flat string variables, short in all, have one.

    Strings only, because equal values of other types print differently (``1``, ``1.0`` and ``True``
    are equal keys); the order of the names is kept (another order is another key, never a wrong hit).
    """
    if type(variables) is not dict:
        return None
    size = 0
    for value in variables.values():
        if type(value) is not str:
            return None
        size += len(value)
    if size > _MAX_KEPT_VARIABLE_CHARS:
        return None
    return tuple(variables.items())


def _keepable(rendered: Rendered) -> bool:
    """Short enough to keep, and free of printed memory addresses (``repeatable_output``)."""
    if isinstance(rendered, str):
        return len(rendered) <= _MAX_KEPT_OUTPUT_CHARS and repeatable_output(rendered)
    size = 0
    for message in rendered:
        size += len(message.content)
        if size > _MAX_KEPT_OUTPUT_CHARS or not repeatable_output(message.content):
            return False
    return True


@dataclass(slots=True)
class RenderReuse:
    """How often a version's renders were reused; one whose variables rarely repeat stops being looked up.

    A reused render costs about 5 us against 13 us for a render, and keeping renders that are never
    reused adds about 2-3 us to each: from ``_REUSE_TRIAL`` lookups on, reuse stays on while at least
    a third of them hit. A reloaded version (a change, or the end of its lifetime) starts anew.
    """

    on: bool = True
    hits: int = 0
    misses: int = 0

    def missed(self) -> None:
        self.misses += 1
        if self.misses + self.hits >= _REUSE_TRIAL and self.hits * 2 < self.misses:
            self.on = False


@dataclass(frozen=True, slots=True)
class ResolvedVersion:
    number: int
    state: State
    kind: str
    compiled: CompiledPrompt
    config: LinkedConfig | None
    body: bytes  # the encoded resolve response
    etag: str
    reuse: RenderReuse = field(default_factory=RenderReuse, compare=False)


def _config_used(config: LinkedConfig | None) -> ConfigUsed | None:
    if config is None:
        return None
    return ConfigUsed(name=config.name, version=config.version, model=config.model)


@dataclass(slots=True)
class PromptEntry:
    prompt_id: int
    name: str
    description: str
    tags: list[str]
    labels: Labels
    versions: dict[int, ResolvedVersion] = field(default_factory=dict)
    store_io: bool = False  # completions keep their redacted texts
    fresh_until: float = 0.0
    # The resolution of a label outside any experiment, by version: made once, as it is immutable.
    resolutions: dict[int, Resolution] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Resolution:
    entry: PromptEntry
    version: ResolvedVersion
    stale: bool
    config: LinkedConfig | None  # what to run with: the version's config, or a variant's override
    experiment: ExperimentOut | None = None
    # Where an experiment routed the unit: the config of the version the caller addressed (production's), which
    # judges the caller's overrides, as it would without the experiment; None: ``config`` itself.
    addressed_config: LinkedConfig | None = None


@dataclass(frozen=True, slots=True)
class Rendering:
    out: RenderOut
    resolution: Resolution


@dataclass(frozen=True, slots=True)
class Routing:
    """Where an experiment sends a unit: a version (and optionally another config), or nowhere special."""

    experiment: ExperimentOut
    version: int | None  # None: the unit is outside the experiment and gets the production version
    config: LinkedConfig | None = None


class VariantRouter(Protocol):
    """Chooses the version a unit sees while an experiment runs on a prompt (see the experiments domain).

    Called on the fast path: it must not touch the database.
    """

    def route(self, prompt: str, unit: str) -> Routing | None: ...


def _build_version(entry: PromptEntry, version: PromptVersion) -> ResolvedVersion:
    compiled = compile_prompt(
        "chat" if version.kind == "chat" else "text",
        template=version.template,
        messages=version.messages,
        input_schema=version.input_schema,
    )
    config = LinkedConfig.of(version.config_version)
    body = msgspec.json.encode(
        ResolvedPromptOut(
            name=entry.name,
            description=entry.description,
            tags=entry.tags,
            labels=entry.labels,
            version=PromptVersionOut.of(entry.name, version, compiled.variables),
        )
    )
    return ResolvedVersion(
        number=version.number,
        state=State(version.state),
        kind=version.kind,
        compiled=compiled,
        config=config,
        body=body,
        etag=f'"{hashlib.sha256(body).hexdigest()[:32]}"',
    )


def _build_entry(prompt: Prompt, versions: list[PromptVersion]) -> PromptEntry:
    by_state = {v.state: v.number for v in versions}
    entry = PromptEntry(
        prompt_id=prompt.id,
        name=prompt.name,
        description=prompt.description,
        tags=list(prompt.tags),
        labels=Labels(
            production=by_state.get(State.PRODUCTION.value),
            staging=by_state.get(State.STAGING.value),
            latest=prompt.latest_version or None,
        ),
        store_io=prompt.store_io,
    )
    for version in versions:
        entry.versions[version.number] = _build_version(entry, version)
    return entry


class PromptCatalog:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        bus: ChangeBus,
        *,
        ttl: float,
        degraded_ttl: float,
        max_prompts: int,
        limits: RenderLimits,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._bus = bus
        self._ttl = ttl
        self._degraded_ttl = degraded_ttl
        self._max_prompts = max_prompts
        self.limits = limits
        self._entries: OrderedDict[str, PromptEntry] = OrderedDict()
        # Names found absent, until when: kept apart from the prompts, so a caller asking for made-up names
        # cannot push real prompts out (their copies are what is served while the database is unreachable).
        self._absent: OrderedDict[str, float] = OrderedDict()
        self._loading: SingleFlight[str, PromptEntry | None] = SingleFlight()  # one read per prompt
        self._generation = 0
        self.router: VariantRouter | None = None
        # Renders of repeatable templates, by version (held, so its id is not reused) and variables.
        self._renders: dict[tuple[int, RenderKey], tuple[ResolvedVersion, Rendered]] = {}
        # Lookups by outcome, read by /metrics: plain integers, cheaper than the client library's counters.
        self.hits = self.stale_hits = self.misses = 0
        bus.subscribe(self._on_change)

    def _on_change(self, change: Change) -> None:
        """Expire (rather than drop) what changed: the old copy is still the best answer if the database is down."""
        if change.kind == "prompt":
            self._expire(change.name)
        elif change.kind == "reset":
            self._loading.forget_all()
            self._absent.clear()
            for name in list(self._entries):
                self._expire(name)
        else:
            return
        self._generation += 1

    def _expire(self, name: str) -> None:
        self._loading.forget(name)  # a request from now on reads the prompt as changed
        cached = self._entries.get(name)
        if cached is not None:
            cached.fresh_until = 0.0
        self._absent.pop(name, None)

    def _lifetime(self) -> float:
        return self._ttl if self._bus.connected else self._degraded_ttl

    @property
    def loaded(self) -> int:
        """Prompts held, fresh or not: what this process can still serve while the database is unreachable."""
        return len(self._entries)

    # -- resolution

    async def resolve(
        self, name: str, *, label: str | None = None, version: int | None = None, unit: str | None = None
    ) -> Resolution:
        """The version to serve. Experiments route units only on production traffic:
        an explicit version or another label bypasses them."""
        entry, stale = await self._entry(name)
        if version is not None:
            resolved = await self._version(entry, version)
            return Resolution(entry, resolved, stale, resolved.config)
        label = label or _PRODUCTION
        routing = None
        if unit is not None and label == _PRODUCTION and self.router is not None:
            routing = self.router.route(name, unit)
        if routing is not None and routing.version is not None:
            resolved = await self._version(entry, routing.version)
            production = entry.labels.production
            addressed = entry.versions[production].config if production is not None else None
            return Resolution(entry, resolved, stale, routing.config or resolved.config, routing.experiment, addressed)
        number = getattr(entry.labels, label)
        if number is None:
            no_versions = label == "latest"
            raise LabelNotSetError(
                f"prompt '{name}' has no versions yet" if no_versions else f"prompt '{name}' has no {label} version"
            )
        resolved = entry.versions[number]
        if routing is None and not stale:
            plain = entry.resolutions.get(number)
            if plain is None or plain.version is not resolved:
                plain = entry.resolutions[number] = Resolution(entry, resolved, False, resolved.config)
            return plain
        return Resolution(entry, resolved, stale, resolved.config, routing.experiment if routing else None)

    async def _version(self, entry: PromptEntry, number: int) -> ResolvedVersion:
        return entry.versions.get(number) or await self._load_version(entry, number)

    async def render(
        self,
        name: str,
        variables: Mapping[str, Any],
        *,
        label: str | None = None,
        version: int | None = None,
        unit: str | None = None,
    ) -> Rendering:
        """Render a prompt; the resolution says which version and config, and if the copy is stale."""
        resolution = await self.resolve(name, label=label, version=version, unit=unit)
        resolved = resolution.version
        rendered = self._rendered(resolved, variables)
        is_chat = isinstance(rendered, list)
        out = RenderOut(
            prompt=name,
            version=resolved.number,
            state=resolved.state,
            kind=resolved.kind,
            text=None if is_chat else str(rendered),
            messages=[Message(role=m.role, content=m.content) for m in rendered if isinstance(m, ChatMessage)]
            if is_chat
            else None,
            config=_config_used(resolution.config),
            experiment=resolution.experiment,
        )
        return Rendering(out, resolution)

    def _rendered(self, resolved: ResolvedVersion, variables: Mapping[str, Any]) -> Rendered:
        """The version rendered with ``variables``, reused when the same version had the same variables.

        Only for repeatable templates (``CompiledPrompt.repeatable``: no ``random``), whose output is a
        function of the variables and of this catalog's limits, and only successful renders (their variables
        passed validation, which depends on them alone). What is returned is only read (chat messages are
        frozen). A version whose variables rarely repeat stops being looked up (``RenderReuse``).
        """
        compiled = resolved.compiled
        reuse = resolved.reuse
        key = render_key(variables) if compiled.repeatable and reuse.on else None
        if key is not None:
            kept = self._renders.get((id(resolved), key))
            if kept is not None and kept[0] is resolved:
                reuse.hits += 1
                return kept[1]
        try:
            rendered = compiled.render(variables, self.limits)
        except VariablesInvalidError as exc:
            raise VariablesInvalidHttpError.of(exc) from exc
        except RenderError as exc:
            raise RenderFailedError.of(exc) from exc
        if key is not None:
            reuse.missed()
            if _keepable(rendered):
                if len(self._renders) >= _MAX_KEPT_RENDERS:
                    self._renders.clear()  # cheaper than tracking use; the renders that repeat come back at once
                self._renders[(id(resolved), key)] = (resolved, rendered)
        return rendered

    # -- cache

    async def _entry(self, name: str) -> tuple[PromptEntry, bool]:
        cached = self._entries.get(name)
        now = time.monotonic()
        if cached is not None:
            if cached.fresh_until >= now:
                self.hits += 1
                return cached, False
        elif self._absent.get(name, 0.0) >= now:
            self.hits += 1
            raise PromptNotFoundError(f"no prompt is named '{name}'")
        self.misses += 1
        try:
            entry = await self._loading.load(name, lambda: self._load(name))
        except DatabaseUnavailableError:
            if cached is not None:
                logger.warning("serving a stale prompt: the database is unreachable", prompt=name)
                self.stale_hits += 1
                return cached, True
            raise
        if entry is None:
            raise PromptNotFoundError(f"no prompt is named '{name}'")
        return entry, False

    async def _load(self, name: str) -> PromptEntry | None:
        generation = self._generation
        try:
            async with self._sessionmaker() as session:
                await session.connection(execution_options=READ_ONLY)  # no write lock on SQLite for a read
                prompt, versions = await PromptCatalogRepository(session).load_labelled(name)
        except (SQLAlchemyError, OSError) as exc:
            raise translate_exception(exc) from exc
        if prompt is None:
            if generation == self._generation:
                self._store_absent(name, time.monotonic() + _NEGATIVE_TTL)
            return None
        entry = _build_entry(prompt, list(versions))
        entry.fresh_until = time.monotonic() + self._lifetime()
        if generation == self._generation:  # no change arrived while reading
            self._store(name, entry)
        return entry

    async def _load_version(self, entry: PromptEntry, number: int) -> ResolvedVersion:
        generation = self._generation
        try:
            async with self._sessionmaker() as session:
                await session.connection(execution_options=READ_ONLY)
                version = await PromptCatalogRepository(session).load_version(entry.prompt_id, number)
        except (SQLAlchemyError, OSError) as exc:
            raise translate_exception(exc) from exc
        if version is None:
            raise PromptVersionNotFoundError(f"prompt '{entry.name}' has no version {number}")
        resolved = _build_version(entry, version)
        if generation == self._generation:
            if len(entry.versions) >= _MAX_VERSIONS_PER_ENTRY:
                labelled = {entry.labels.production, entry.labels.staging, entry.labels.latest}
                for old in [n for n in entry.versions if n not in labelled][:1]:
                    del entry.versions[old]
            entry.versions[number] = resolved
        return resolved

    def _store(self, name: str, entry: PromptEntry) -> None:
        self._absent.pop(name, None)
        self._entries[name] = entry
        self._entries.move_to_end(name)
        while len(self._entries) > self._max_prompts:
            self._entries.popitem(last=False)

    def _store_absent(self, name: str, until: float) -> None:
        self._entries.pop(name, None)  # deleted: its copy is not served, not even while the database is away
        self._absent[name] = until
        self._absent.move_to_end(name)
        while len(self._absent) > self._max_prompts:
            self._absent.popitem(last=False)
