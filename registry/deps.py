"""Dependencies shared by controllers: the request's transaction, caller and paging."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import FromPath, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.principal import Actor, Principal
from registry.db.session import unit_of_work
from registry.lib.errors import InvalidInputError
from registry.lib.http import decode_name
from registry.lib.pagination import PageRequest, decode_cursor
from registry.runtime import Runtime


async def provide_db_session(state: State) -> AsyncGenerator[AsyncSession, None]:
    """The request's transaction: committed after the handler returns, rolled back if it raises."""
    runtime: Runtime = state.runtime
    async with unit_of_work(runtime.sessionmaker, runtime.bus) as session:
        yield session


async def provide_read_session(state: State) -> AsyncGenerator[AsyncSession, None]:
    """A read-only session on the read replica (the primary when none is configured), for analytics."""
    runtime: Runtime = state.runtime
    async with runtime.read_sessionmaker() as session:
        yield session


def provide_actor(request: Request[Principal, Any, Any]) -> Actor:
    principal = request.user
    return Actor(
        name=principal.name, key_public_id=principal.public_id, request_id=request.scope["state"].get("request_id")
    )


def provide_page(
    state: State,
    limit: Annotated[int, QueryParameter(ge=1, description="Items per page.")] = 50,
    cursor: Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page.")] = None,
) -> PageRequest:
    runtime: Runtime = state.runtime
    if limit > runtime.settings.max_page_size:
        raise InvalidInputError(f"limit may be at most {runtime.settings.max_page_size}")
    return PageRequest(limit=limit, after=decode_cursor(cursor, 1))


def provide_resource_name(name: FromPath[str]) -> str:
    """The ``{name}`` path parameter, with ``%2F`` (kept encoded through routing) back to ``/``."""
    return decode_name(name)


def provide_runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


COMMON_DEPENDENCIES = {
    "db_session": Provide(provide_db_session),
    "read_session": Provide(provide_read_session),
    "current_actor": Provide(provide_actor, sync_to_thread=False),
    "page": Provide(provide_page, sync_to_thread=False),
    "runtime": Provide(provide_runtime, sync_to_thread=False),
}
