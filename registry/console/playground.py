"""The playground: one prompt version, or two side by side, rendered and run on the same variables.

Nothing here renders or runs by itself. Rendering is the prompt catalog's (what ``POST .../render``
answers); running is ``CompletionService.open_stream`` with the signed-in key as the caller, so a
run is budgeted, priced, recorded (also when the page is left: ``cancelled``) and counted in usage
exactly as ``POST .../complete`` with ``stream: true``. The one thing the API does not take per
request, running a version with another model config version, is the same service told that config
(it plans the completion with it in place of the version's own, as an evaluation run's config).

The database is read in a short session of its own that is closed before the catalog is asked:
the catalog may open a session to load a version, and on the embedded default the pool holds a
single connection. How the runs reach the page is the controller's (``playground_controller``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.completions.components import Completions
from registry.completions.schemas import CompleteRequest
from registry.completions.service import Caller, CompletionService, CompletionStream
from registry.configs.service import ConfigService
from registry.console import tokens
from registry.console.models import ConsoleSession
from registry.console.playground_form import VariableField, merged_fields, variables_for
from registry.console.playground_repository import PlaygroundRepository
from registry.console.repository import ConsoleSessionRepository
from registry.db.base import utcnow
from registry.lib.errors import FieldError, InvalidInputError, NotFoundError, RegistryError
from registry.lib.pagination import PageRequest
from registry.lib.promotion import State
from registry.lib.schema import Output
from registry.prompts.catalog import PromptCatalog
from registry.prompts.models import PromptVersion
from registry.prompts.schemas import LinkedConfig, RenderOut
from registry.prompts.service import PromptLimits, PromptService, compile_version

VERSIONS_LISTED = 100
CONFIG_VERSIONS_LISTED = 300
SIDE_KEYS = ("a", "b")


# --------------------------------------------------------------------------- what the page shows


@dataclass(frozen=True, slots=True)
class VersionChoice:
    number: int
    state: str
    config: str | None  # "name@version" of its linked config


@dataclass(frozen=True, slots=True)
class ConfigChoice:
    value: str  # "name@version", as the picker sends it
    name: str
    version: int
    state: str
    backend: str
    model: str


@dataclass(frozen=True, slots=True)
class Selection:
    """What the pickers chose: a version and optionally another config for it, and the same for a second one."""

    version: int | None = None
    config: str = ""  # "name@version"; empty: the version's own
    compare_version: int | None = None
    compare_config: str = ""

    def query(self) -> dict[str, str | int]:
        """As the picker's query string, without the empty choices."""
        values = {
            "version": self.version,
            "config": self.config,
            "compare_version": self.compare_version,
            "compare_config": self.compare_config,
        }
        return {name: value for name, value in values.items() if value}


def without_picker(selection: Selection, picker: str) -> Selection:
    """The selection without one picker's choice; without the second version, its config goes too."""
    if picker == "version":
        return replace(selection, version=None)
    if picker == "compare_version":
        return replace(selection, compare_version=None, compare_config="")
    if picker == "compare_config":
        return replace(selection, compare_config="")
    return replace(selection, config="")


def config_label(config: LinkedConfig | None) -> str | None:
    return f"{config.name}@{config.version}" if config is not None else None


@dataclass(frozen=True, slots=True)
class Side:
    """One version as it renders and runs: its column on the page."""

    key: str  # "a" or "b"
    version: int
    state: str
    kind: str
    schema: dict[str, Any]
    own_config: LinkedConfig | None
    chosen_config: LinkedConfig | None = None  # another config version to run with

    @property
    def config(self) -> LinkedConfig | None:
        """What a run uses."""
        return self.chosen_config or self.own_config

    @property
    def config_text(self) -> str | None:
        return config_label(self.config)


@dataclass(frozen=True, slots=True)
class PlaygroundView:
    name: str
    selection: Selection
    versions: list[VersionChoice]
    configs: list[ConfigChoice]
    sides: list[Side]
    fields: list[VariableField]
    more_configs: bool = False  # more config versions exist than ``configs`` suggests; any may be typed
    more_versions: bool = False  # the prompt has versions older than the ``listed_versions`` newest
    listed_versions: int = 0


@dataclass(frozen=True, slots=True)
class RenderResult:
    side: Side
    out: RenderOut | None
    error: RegistryError | None = None


@dataclass(frozen=True, slots=True)
class OpenedRun:
    """A run that started (its stream), or the problem that stopped it before its first token."""

    side: Side
    stream: CompletionStream | None
    error: RegistryError | None = None


# --------------------------------------------------------------------------- the service


# Each side's pickers: the field of its version, the field of its config.
PICKER_FIELDS = {SIDE_KEYS[0]: ("version", "config"), SIDE_KEYS[1]: ("compare_version", "compare_config")}


class PickerError(InvalidInputError):
    """A picker's choice that names nothing to try: the message for its field (``version``, ``compare_config``…)."""

    def __init__(self, picker: str, message: str) -> None:
        super().__init__(message, errors=[FieldError(picker, message)])
        self.picker = picker


def _split_config(value: str, picker: str = "config") -> tuple[str, int]:
    name, _, number = value.rpartition("@")
    if not name or not number.isdigit() or not 0 < int(number) < 2**31:
        raise PickerError(picker, f"'{value}' is not a config version: write it as name@version, such as fast@2")
    return name, int(number)


class Playground:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        catalog: PromptCatalog,
        completions: Completions,
        limits: PromptLimits,
        *,
        run_forms_last: timedelta,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.catalog = catalog
        self.completions = completions
        self.limits = limits
        self.run_forms_last = run_forms_last  # a sign-in's lifetime: no form of the session is sent after it

    async def claim_run(self, session_token: str, run_id: str, *, key: str, now: datetime | None = None) -> bool:
        """Whether the run form ``run_id`` of this session runs: once; False when it ran already (a resubmission).

        The session's row of record is a ``console_sessions`` row, found under a label of its own (so no
        cookie opens it) and so shared by every worker; it is kept as long as a sign-in lasts, the longest
        the session's form can still be sent, and removed with the other expired rows after that.
        """
        now = now or utcnow()
        async with self.sessionmaker() as session, session.begin():
            repository = ConsoleSessionRepository(session)
            await repository.remove_expired(now)
            return await repository.add_first(
                ConsoleSession(
                    token_digest=tokens.run_made_digest(session_token, run_id),
                    sealed_key=b"",
                    key_public_id=key,
                    created_at=now,
                    expires_at=now + self.run_forms_last,
                )
            )

    async def view(self, name: str, selection: Selection) -> PlaygroundView:
        """The pickers' choices and the versions they chose; the version defaults to production, else the latest."""
        async with self.sessionmaker() as session:
            prompts = PromptService(session, self.limits)
            workflow = prompts.workflow
            prompt = await workflow.require(name)
            fetched = await workflow.list_versions(name, PageRequest(limit=VERSIONS_LISTED, after=None), state=None)
            listed = list(fetched[:VERSIONS_LISTED])
            configs = await PlaygroundRepository(session).config_versions(CONFIG_VERSIONS_LISTED + 1)
            newest = list(listed)
            by_number = {version.number: version for version in listed}
            # From the holders, not the versions listed: production may be older than the newest hundred.
            held = (await prompts.repository.holders(prompt.id)).get(State.PRODUCTION)
            production = held.number if held is not None else None
            first = selection.version or production or (prompt.latest_version or None)
            if first is None:
                raise InvalidInputError(f"prompt '{name}' has no versions yet; create one to try it here")
            wanted = [(SIDE_KEYS[0], first, selection.config)]
            if selection.compare_version:
                wanted.append((SIDE_KEYS[1], selection.compare_version, selection.compare_config))
            sides = []
            for key, number, config in wanted:
                version_picker, config_picker = PICKER_FIELDS[key]
                try:
                    version = by_number.get(number) or await workflow.require_version(prompt, number)
                except NotFoundError as exc:
                    raise PickerError(version_picker, f"{prompt.name} has no version {number}") from exc
                if number not in by_number:  # older than the versions listed: listed as well, so the picker shows it
                    by_number[number] = version
                    listed.append(version)
                sides.append(await self._side(session, key, version, config, config_picker))
        chosen = replace(selection, version=first)
        return PlaygroundView(
            name=prompt.name,
            selection=chosen,
            versions=[
                VersionChoice(v.number, v.state, config_label(LinkedConfig.of(v.config_version))) for v in listed
            ],
            configs=[
                ConfigChoice(f"{config}@{v.number}", config, v.number, v.state, v.backend, v.model)
                for config, v in configs[:CONFIG_VERSIONS_LISTED]
            ],
            sides=sides,
            fields=merged_fields(side.schema for side in sides),
            more_configs=len(configs) > CONFIG_VERSIONS_LISTED,
            more_versions=len(fetched) > VERSIONS_LISTED,
            listed_versions=len(newest),
        )

    async def view_picked(self, name: str, selection: Selection) -> tuple[PlaygroundView, dict[str, str]]:
        """The view of what the pickers chose, leaving out each choice that names nothing (a mistyped version or
        config): the page shows what remains, and the problem of each picker left out, by its field."""
        problems: dict[str, str] = {}
        while True:
            try:
                return await self.view(name, selection), problems
            except PickerError as exc:
                if exc.picker in problems:  # pragma: no cover - a picker left out cannot fail again
                    raise
                problems[exc.picker] = exc.detail
                selection = without_picker(selection, exc.picker)

    async def _side(
        self, session: AsyncSession, key: str, version: PromptVersion, config: str, picker: str = "config"
    ) -> Side:
        chosen = None
        if config:
            config_name, number = _split_config(config, picker)
            try:
                _, found = await ConfigService(session).workflow.resolve(config_name, version=number, label=None)
            except NotFoundError as exc:
                raise PickerError(picker, exc.detail) from exc
            chosen = LinkedConfig.of(found)
        return Side(
            key=key,
            version=version.number,
            state=version.state,
            kind=version.kind,
            schema=compile_version(version).input_schema,
            own_config=LinkedConfig.of(version.config_version),
            chosen_config=chosen,
        )

    async def render(self, view: PlaygroundView, variables: Mapping[str, Any]) -> list[RenderResult]:
        """Each side rendered by the catalog with the variables its schema takes."""
        results = []
        for side in view.sides:
            try:
                rendering = await self.catalog.render(
                    view.name, variables_for(side.schema, variables), version=side.version
                )
            except RegistryError as exc:
                results.append(RenderResult(side, None, exc))
            else:
                results.append(RenderResult(side, rendering.out))
        return results

    def _service(self, side: Side) -> CompletionService:
        return CompletionService(self.completions, self.catalog, config=side.chosen_config)

    async def open_runs(
        self, view: PlaygroundView, variables: Mapping[str, Any], caller: Caller, *, max_tokens: int | None
    ) -> list[OpenedRun]:
        """Start every side's completion at once; a side that fails before its first token carries its problem."""

        async def open_one(side: Side) -> OpenedRun:
            request = CompleteRequest(
                variables=variables_for(side.schema, variables),
                version=side.version,
                stream=True,
                max_tokens=max_tokens,
            )
            try:
                return OpenedRun(side, await self._service(side).open_stream(view.name, request, caller))
            except RegistryError as exc:
                return OpenedRun(side, None, exc)

        opening = [asyncio.create_task(open_one(side)) for side in view.sides]
        try:
            return [await task for task in opening]
        except BaseException:
            # The page was left (or a side failed unexpectedly): the sides that opened are never read.
            for task in opening:
                task.cancel()
            for outcome in await asyncio.gather(*opening, return_exceptions=True):
                if isinstance(outcome, OpenedRun) and outcome.stream is not None:
                    await outcome.stream.discard()
            raise


# --------------------------------------------------------------------------- side by side


@dataclass(frozen=True, slots=True)
class SideEvent:
    """One event of one side's stream: the service's ``delta``, ``done`` or ``error``, then ``end``."""

    side: str
    name: str
    data: Output | RegistryError | None = None


class Interleaved:
    """The events of every started run as they come, each side's in order; each side ends with ``end``.

    Each stream is read by a task of its own, started here (so every stream is read, and so
    recorded, even if the page is never sent) and closed by that task however the reading stops:
    ``close`` (the page was left, or written) cancels the tasks, and the service records a run
    still going as cancelled. ``on_failure`` turns an unexpected exception into the problem shown.
    """

    def __init__(self, runs: Sequence[OpenedRun], on_failure: Callable[[Exception], RegistryError]) -> None:
        self._queue: asyncio.Queue[SideEvent] = asyncio.Queue()
        self._on_failure = on_failure
        started = [(run.side.key, run.stream) for run in runs if run.stream is not None]
        self._streams = [stream for _, stream in started]
        self._tasks = [asyncio.create_task(self._read(key, stream)) for key, stream in started]

    async def _read(self, key: str, stream: CompletionStream) -> None:
        try:
            async with aclosing(stream.events) as events:
                async for name, data in events:
                    self._queue.put_nowait(SideEvent(key, name, data))
        except Exception as exc:
            self._queue.put_nowait(SideEvent(key, "error", self._on_failure(exc)))
        finally:
            self._queue.put_nowait(SideEvent(key, "end"))

    async def events(self) -> AsyncIterator[SideEvent]:
        remaining = len(self._tasks)
        while remaining:
            event = await self._queue.get()
            if event.name == "end":
                remaining -= 1
            else:
                yield event

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for stream in self._streams:  # a task cancelled before its first step never started its stream
            await stream.discard()
