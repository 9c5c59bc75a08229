"""Named resources with immutable, numbered versions and promotion states.

Prompts and model configs share this machinery: the table shapes (mixins),
the queries (``VersionedRepository``) and the write workflow
(``VersionWorkflow``: numbering, idempotent creates, promote, rollback,
history). Domain services add what is specific to their content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from msgspec import UNSET
from sqlalchemy import CheckConstraint, Index, String, Text, UniqueConstraint, exists, func, select, text, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, Mapped, mapped_column

from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.db.base import IdMixin, JSONValue, utcnow
from registry.lib.changes import Change, ChangeKind, record_change
from registry.lib.errors import ConflictError, FieldError, InvalidInputError, NotFoundError
from registry.lib.pagination import PageRequest
from registry.lib.promotion import HELD_STATES, State, StateChange, plan_promotion, plan_rollback
from registry.outbox.events import emit_event

if TYPE_CHECKING:
    from registry.lib.versioned_schemas import PromoteRequest, RollbackRequest

# --------------------------------------------------------------------------- table shapes


class VersionedResourceMixin(IdMixin):
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    tags: Mapped[list[str]] = mapped_column(JSONValue, default=list)
    latest_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class VersionMixin(IdMixin):
    number: Mapped[int]
    state: Mapped[str] = mapped_column(String(16), default=State.DRAFT.value)
    content_sha256: Mapped[str] = mapped_column(String(64))
    commit_message: Mapped[str] = mapped_column(String(1000), default="")
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TransitionMixin(IdMixin):
    version_number: Mapped[int]
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128))
    actor_key_id: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def version_table_args(table: str, parent_column: str) -> tuple[Any, ...]:
    """Numbering and the one-holder-per-state rule, enforced by the database itself."""
    states = ", ".join(f"'{s.value}'" for s in State)
    return (
        UniqueConstraint(parent_column, "number"),
        CheckConstraint(f"state IN ({states})", name="state"),
        CheckConstraint("number >= 1", name="number_positive"),
        *(
            Index(
                f"uq_{table}_one_{held.value}",
                parent_column,
                unique=True,
                postgresql_where=text(f"state = '{held.value}'"),
                sqlite_where=text(f"state = '{held.value}'"),
            )
            for held in HELD_STATES
        ),
    )


def transition_table_args(table: str, parent_column: str) -> tuple[Any, ...]:
    return (Index(f"ix_{table}_history", parent_column, "id"),)


R = TypeVar("R", bound=VersionedResourceMixin)
V = TypeVar("V", bound=VersionMixin)
T = TypeVar("T", bound=TransitionMixin)


# --------------------------------------------------------------------------- queries


class VersionedRepository(Generic[R, V, T]):
    """Queries over one resource table, its versions and their transitions."""

    resource_model: ClassVar[type[Any]]
    version_model: ClassVar[type[Any]]
    transition_model: ClassVar[type[Any]]
    parent_column: ClassVar[str]
    # Eager loads applied whenever versions are read (relationships are lazy="raise").
    version_options: ClassVar[tuple[Any, ...]] = ()

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _version_parent(self) -> InstrumentedAttribute[int]:
        column: InstrumentedAttribute[int] = getattr(self.version_model, self.parent_column)
        return column

    def _transition_parent(self) -> InstrumentedAttribute[int]:
        column: InstrumentedAttribute[int] = getattr(self.transition_model, self.parent_column)
        return column

    async def add(self, row: Any) -> None:
        self.session.add(row)
        await self.session.flush()

    async def get_resource(self, name: str, *, for_update: bool = False) -> R | None:
        query = select(self.resource_model).where(self.resource_model.name == name)
        if for_update:
            query = query.with_for_update()
        resource: R | None = (await self.session.execute(query)).scalar_one_or_none()
        return resource

    async def resource_exists(self, name: str) -> bool:
        return bool(await self.session.scalar(select(exists().where(self.resource_model.name == name))))

    async def list_resources(self, page: PageRequest, *, prefix: str | None, tag: str | None) -> Sequence[R]:
        model = self.resource_model
        query = select(model).order_by(model.name).limit(page.limit + 1)
        if page.after is not None:
            query = query.where(model.name > page.after_text)
        if prefix:
            query = query.where(model.name.startswith(prefix, autoescape=True))
        if tag:
            query = query.where(self._has_tag(tag))
        rows: Sequence[R] = (await self.session.scalars(query)).all()
        return rows

    def _has_tag(self, tag: str) -> Any:
        tags = self.resource_model.tags
        if self.session.get_bind().dialect.name == "postgresql":
            return type_coerce(tags, JSONB).contains([tag])
        each = func.json_each(tags).table_valued("value")
        return exists(select(1).select_from(each).where(each.c.value == tag))

    async def get_version(self, resource_id: int, number: int) -> V | None:
        query = (
            select(self.version_model)
            .where(self._version_parent() == resource_id, self.version_model.number == number)
            .options(*self.version_options)
        )
        version: V | None = (await self.session.execute(query)).scalar_one_or_none()
        return version

    async def holders(self, resource_id: int) -> dict[State, V]:
        query = (
            select(self.version_model)
            .where(
                self._version_parent() == resource_id,
                self.version_model.state.in_([s.value for s in HELD_STATES]),
            )
            .options(*self.version_options)
        )
        return {State(v.state): v for v in (await self.session.scalars(query)).all()}

    async def holder_numbers(self, resource_ids: Sequence[int]) -> dict[int, dict[State, int]]:
        """The production and staging version numbers of many resources in one query (a listing's columns)."""
        if not resource_ids:
            return {}
        parent = self._version_parent()
        query = select(parent, self.version_model.state, self.version_model.number).where(
            parent.in_(resource_ids), self.version_model.state.in_([s.value for s in HELD_STATES])
        )
        found: dict[int, dict[State, int]] = {resource_id: {} for resource_id in resource_ids}
        for resource_id, state, number in (await self.session.execute(query)).all():
            found[resource_id][State(state)] = number
        return found

    async def list_versions(self, resource_id: int, page: PageRequest, *, state: State | None) -> Sequence[V]:
        model = self.version_model
        query = (
            select(model)
            .where(self._version_parent() == resource_id)
            .order_by(model.number.desc())
            .limit(page.limit + 1)
            .options(*self.version_options)
        )
        if page.after is not None:
            query = query.where(model.number < page.after_number)
        if state is not None:
            query = query.where(model.state == state.value)
        rows: Sequence[V] = (await self.session.scalars(query)).all()
        return rows

    async def set_state(self, version: V, state: State) -> None:
        version.state = state.value
        await self.session.flush()

    async def list_transitions(self, resource_id: int, page: PageRequest) -> Sequence[T]:
        model = self.transition_model
        query = (
            select(model)
            .where(self._transition_parent() == resource_id)
            .order_by(model.id.desc())
            .limit(page.limit + 1)
        )
        if page.after is not None:
            query = query.where(model.id < page.after_number)
        rows: Sequence[T] = (await self.session.scalars(query)).all()
        return rows

    async def production_numbers(self, resource_id: int) -> list[int]:
        """Versions that entered production, most recent first (repeats removed)."""
        model = self.transition_model
        query = (
            select(model.version_number)
            .where(self._transition_parent() == resource_id, model.to_state == State.PRODUCTION.value)
            .order_by(model.id.desc())
        )
        seen: list[int] = []
        for number in (await self.session.scalars(query)).all():
            if number not in seen:
                seen.append(number)
        return seen


# --------------------------------------------------------------------------- workflow


@dataclass(frozen=True, slots=True)
class ResourceErrors:
    """The not-found errors a workflow raises, specific to its resource."""

    resource_not_found: type[NotFoundError]
    version_not_found: type[NotFoundError]
    label: str  # "prompt" or "config", in messages


class LabelNotSetError(NotFoundError):
    """No version holds the requested label (for example: nothing is in production yet)."""

    type = "label_not_set"
    title = "No version holds this label"


class ResourceExistsError(ConflictError):
    """A prompt or config with this name already exists."""

    type = "already_exists"
    title = "Already exists"


@dataclass(frozen=True, slots=True)
class GateCheck:
    """A promotion about to happen, for a ``PromotionGate`` to allow or refuse."""

    resource_type: str  # "prompt" or "config"
    name: str
    version: Any  # the version row being promoted
    to: State
    current: Any | None  # the version holding ``to`` now
    actor: Actor
    override_reason: str | None  # the promoter asks to override a failed gate, saying why


class PromotionGate(Protocol):
    """Evidence a promotion must show (evaluations provide one; the app wires it into the sessions).

    ``check`` raises to refuse; when the promoter overrode a failed gate, or the evidence is not the
    version's own, it returns a note for the history, otherwise None.
    """

    async def check(self, session: AsyncSession, check: GateCheck) -> str | None: ...


# The key of ``Session.info`` under which the app puts its ``PromotionGate``: every promotion made on
# the app's sessions (the API, the console, an experiment's winner) passes it, and prompts and the
# shared workflow never import the domain that provides it.
PROMOTION_GATE = "promotion_gate"


class PromotionLock(Protocol):
    """Something that holds a resource's production label for a while (a rollout, see the rollouts domain):
    ``check`` raises to refuse a promotion or rollback that would move it. ``entering`` is the version that would
    enter production, once known: something that serves production's callers elsewhere (a running experiment's
    variants) refuses a version whose callers it could not serve."""

    async def check(self, session: AsyncSession, resource_type: str, name: str, entering: Any = None) -> None: ...


# The key of ``Session.info`` under which the app puts its ``PromotionLock`` (wired like PROMOTION_GATE).
PROMOTION_LOCK = "promotion_lock"


async def _check_lock(session: AsyncSession, resource_type: str, name: str, entering: Any = None) -> None:
    lock: PromotionLock | None = session.info.get(PROMOTION_LOCK)
    if lock is not None:
        await lock.check(session, resource_type, name, entering)


@dataclass(frozen=True, slots=True)
class Promotion(Generic[V]):
    version: V
    changes: list[StateChange]


class VersionWorkflow(Generic[R, V, T]):
    """Creating, numbering, promoting and rolling back versions, with history and audit."""

    def __init__(
        self,
        session: AsyncSession,
        repository: VersionedRepository[R, V, T],
        *,
        change_kind: ChangeKind,
        errors: ResourceErrors,
    ) -> None:
        self.session = session
        self.repository = repository
        self.audit = AuditLog(session)
        self.change_kind = change_kind
        self.errors = errors

    @property
    def resource_type(self) -> str:
        return self.errors.label

    def _changed(self, name: str, action: str) -> None:
        record_change(self.session, Change(self.change_kind, name, action))

    # -- resources

    async def require(self, name: str, *, for_update: bool = False) -> R:
        resource = await self.repository.get_resource(name, for_update=for_update)
        if resource is None:
            raise self.errors.resource_not_found(f"no {self.errors.label} is named '{name}'")
        return resource

    async def require_version(self, resource: R, number: int) -> V:
        version = await self.repository.get_version(resource.id, number)
        if version is None:
            raise self.errors.version_not_found(f"{self.errors.label} '{resource.name}' has no version {number}")
        return version

    async def resolve(self, name: str, *, version: int | None, label: str | None) -> tuple[R, V]:
        """The version named by number, or by label (``production`` when neither is given)."""
        resource = await self.require(name)
        if version is not None:
            return resource, await self.require_version(resource, version)
        label = label or State.PRODUCTION.value
        if label == "latest":
            if not resource.latest_version:
                raise LabelNotSetError(f"{self.errors.label} '{name}' has no versions yet")
            return resource, await self.require_version(resource, resource.latest_version)
        holder = (await self.repository.holders(resource.id)).get(State(label))
        if holder is None:
            raise LabelNotSetError(f"{self.errors.label} '{name}' has no {label} version")
        return resource, holder

    async def create_resource(self, resource: R, actor: Actor) -> R:
        if await self.repository.resource_exists(resource.name):
            raise ResourceExistsError(f"a {self.errors.label} named '{resource.name}' already exists")
        resource.created_by = resource.updated_by = actor.name
        await self.repository.add(resource)
        await self.audit.record(
            actor, f"{self.resource_type}.create", self.resource_type, resource.name, after=_summary(resource)
        )
        self._changed(resource.name, "created")
        return resource

    async def update_resource(self, name: str, actor: Actor, *, description: str | None, tags: list[str] | None) -> R:
        resource = await self.require(name, for_update=True)
        before = _summary(resource)
        if description is not None:
            resource.description = description
        if tags is not None:
            resource.tags = sorted(set(tags))
        resource.updated_at = utcnow()
        resource.updated_by = actor.name
        await self.session.flush()
        await self.audit.record(
            actor, f"{self.resource_type}.update", self.resource_type, name, before=before, after=_summary(resource)
        )
        self._changed(name, "updated")
        return resource

    # -- versions

    async def identical_newest(self, resource: R, version: V) -> V | None:
        """The newest version of ``resource`` when ``version``'s content is identical to it (the same digest), else
        None: what ``add_version`` returns instead of storing ``version``, for those who predict it."""
        if not resource.latest_version:
            return None
        newest = await self.require_version(resource, resource.latest_version)
        return newest if newest.content_sha256 == version.content_sha256 else None

    async def add_version(self, resource: R, version: V, actor: Actor) -> tuple[V, bool]:
        """Number and store ``version``; return the newest instead when its content is identical.

        ``resource`` must have been read ``for_update``: the row lock serializes
        concurrent creates, so numbers have no gaps or duplicates.
        """
        newest = await self.identical_newest(resource, version)
        if newest is not None:
            return newest, False
        resource.latest_version += 1
        setattr(version, self.repository.parent_column, resource.id)
        version.number = resource.latest_version
        version.author = actor.name
        version.state = State.DRAFT.value
        resource.updated_at = utcnow()
        resource.updated_by = actor.name
        await self.repository.add(version)
        await self.audit.record(
            actor,
            f"{self.resource_type}.version.create",
            self.resource_type,
            resource.name,
            after={"version": version.number, "sha256": version.content_sha256},
        )
        await emit_event(
            self.session,
            f"{self.resource_type}.version.created",
            resource.name,
            {self.resource_type: resource.name, "version": version.number, "sha256": version.content_sha256},
            actor,
        )
        self._changed(resource.name, "version_created")
        return version, True

    # -- states

    async def promote(self, name: str, number: int, request: PromoteRequest, actor: Actor) -> Promotion[V]:
        """Move a version; ``expected_current`` is required to move into staging or production."""
        to = State(request.to)
        check_expected = to in HELD_STATES
        if check_expected and request.expected_current is UNSET:
            raise InvalidInputError(
                f"expected_current is required to promote to {to.value}: the version you believe holds it, or null",
                errors=[FieldError("expected_current", "is required")],
            )
        expected_current = None if request.expected_current is UNSET else request.expected_current
        resource = await self.require(name, for_update=True)
        target = await self.require_version(resource, number)
        holders = await self.repository.holders(resource.id)
        changes = plan_promotion(
            target=number,
            target_state=State(target.state),
            to=to,
            holders={state: v.number for state, v in holders.items()},
            expected_current=expected_current,
            check_expected=check_expected,
        )
        if any(State.PRODUCTION in (c.from_state, c.to_state) for c in changes):
            await _check_lock(self.session, self.resource_type, name, target if to == State.PRODUCTION else None)
        reason = request.reason
        gate: PromotionGate | None = self.session.info.get(PROMOTION_GATE)
        if gate is not None and changes:
            check = GateCheck(self.resource_type, name, target, to, holders.get(to), actor, request.override_gate)
            note = await gate.check(self.session, check)
            if note:
                reason = f"{reason} ({note})" if reason else note
        await self._apply(resource, changes, [target, *holders.values()], reason, actor)
        return Promotion(target, changes)

    async def rollback(self, name: str, request: RollbackRequest, actor: Actor) -> Promotion[V]:
        """Re-promote an earlier production version (by default the previous one); ``expected_current`` optional."""
        number = request.version
        check_expected = request.expected_current is not UNSET
        expected_current = None if request.expected_current is UNSET else request.expected_current
        resource = await self.require(name, for_update=True)
        await _check_lock(self.session, self.resource_type, name)  # a rollback always moves production
        holders = await self.repository.holders(resource.id)
        current = holders.get(State.PRODUCTION)
        earlier = [
            n for n in await self.repository.production_numbers(resource.id) if current is None or n != current.number
        ]
        if number is None:
            if not earlier:
                raise InvalidInputError(
                    f"{self.errors.label} '{name}' has no earlier production version to roll back to"
                )
            number = earlier[0]
        target = await self.require_version(resource, number)
        changes = plan_rollback(
            target=number,
            target_state=State(target.state),
            holders={state: v.number for state, v in holders.items()},
            expected_current=expected_current,
            check_expected=check_expected,
            was_in_production=number in earlier,
        )
        if changes:
            await _check_lock(self.session, self.resource_type, name, target)  # now that it is known
        await self._apply(resource, changes, [target, *holders.values()], request.reason, actor)
        return Promotion(target, changes)

    async def _apply(
        self, resource: R, changes: list[StateChange], versions: list[V], reason: str | None, actor: Actor
    ) -> None:
        if not changes:
            return
        by_number = {v.number: v for v in versions}
        # Displacements come first, so the partial unique indexes never see two holders.
        for change in changes:
            await self.repository.set_state(by_number[change.number], change.to_state)
            await self.repository.add(
                self.repository.transition_model(
                    **{self.repository.parent_column: resource.id},
                    version_number=change.number,
                    from_state=change.from_state.value,
                    to_state=change.to_state.value,
                    action=change.action,
                    reason=reason,
                    actor=actor.name,
                    actor_key_id=actor.key_public_id,
                )
            )
        main = changes[-1]
        resource.updated_at = utcnow()
        resource.updated_by = actor.name
        await self.session.flush()
        await self.audit.record(
            actor,
            f"{self.resource_type}.{main.action}",
            self.resource_type,
            resource.name,
            before={"states": {str(c.number): c.from_state.value for c in changes}},
            after={"states": {str(c.number): c.to_state.value for c in changes}, "reason": reason},
        )
        await emit_event(
            self.session,
            f"{self.resource_type}.{'rolled_back' if main.action == 'rollback' else 'promoted'}",
            resource.name,
            {
                self.resource_type: resource.name,
                "version": main.number,
                "from_state": main.from_state.value,
                "to_state": main.to_state.value,
                "reason": reason,
                "changes": [
                    {"version": c.number, "from_state": c.from_state.value, "to_state": c.to_state.value}
                    for c in changes
                ],
            },
            actor,
        )
        self._changed(resource.name, main.action)

    async def history(self, name: str, page: PageRequest) -> Sequence[T]:
        resource = await self.require(name)
        return await self.repository.list_transitions(resource.id, page)

    async def list_versions(self, name: str, page: PageRequest, *, state: State | None) -> Sequence[V]:
        resource = await self.require(name)
        return await self.repository.list_versions(resource.id, page, state=state)


def _summary(resource: VersionedResourceMixin) -> dict[str, Any]:
    return {"name": resource.name, "description": resource.description, "tags": list(resource.tags)}


class VersionedResourceService(Generic[R, V, T]):
    """What prompt and config services share: the resource itself and the version workflow."""

    def __init__(
        self,
        session: AsyncSession,
        repository: VersionedRepository[R, V, T],
        *,
        change_kind: ChangeKind,
        errors: ResourceErrors,
    ) -> None:
        self.repository = repository
        self.workflow: VersionWorkflow[R, V, T] = VersionWorkflow(
            session, repository, change_kind=change_kind, errors=errors
        )

    async def create_resource(self, name: str, description: str, tags: list[str], actor: Actor) -> R:
        resource = self.repository.resource_model(name=name, description=description, tags=sorted(set(tags)))
        created: R = await self.workflow.create_resource(resource, actor)
        return created

    async def list_resources(self, page: PageRequest, *, prefix: str | None, tag: str | None) -> Sequence[R]:
        return await self.repository.list_resources(page, prefix=prefix, tag=tag)
