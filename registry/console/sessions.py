"""Console sign-ins: create, look up and end them; who the signed-in key is.

Each call runs its own short transaction, before the page's own transaction begins: on the
embedded default the pool holds a single connection, which the key verifier may need as well.
The key is checked with ``registry.auth.access.authorize``, the API's own check, on every
request, so a revoked key or a removed scope takes effect in the console at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from registry.auth.access import authorize
from registry.auth.keys import Scope, grants
from registry.auth.principal import Actor, Principal
from registry.console import tokens
from registry.console.models import ConsoleSession
from registry.console.repository import ConsoleSessionRepository
from registry.db.base import utcnow
from registry.lib.errors import ForbiddenError, UnauthorizedError
from registry.runtime import Runtime

Credentials = tuple[tuple[bytes, bytes], ...]


def credentials_for(api_key: str) -> Credentials:
    """The API key as the Authorization header the API's access check reads."""
    return ((b"authorization", f"Bearer {api_key.strip()}".encode("latin-1", errors="replace")),)


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in key of a console request, as pages see it (never the key itself)."""

    principal: Principal
    csrf: str
    request_id: str | None = field(default=None, repr=False)

    def can(self, scope: Scope | str) -> bool:
        return grants(self.principal.scopes, Scope(scope))

    @property
    def actor(self) -> Actor:
        return Actor(name=self.principal.name, key_public_id=self.principal.public_id, request_id=self.request_id)


class ConsoleSessions:
    def __init__(self, runtime: Runtime, *, lifetime: timedelta) -> None:
        self.runtime = runtime
        self.lifetime = lifetime

    async def sign_in(self, api_key: str, *, now: datetime | None = None) -> str:
        """Check the key as the API would (it must at least read) and open a session; returns its token."""
        principal = await authorize(self.runtime, credentials_for(api_key), Scope.READ)
        now = now or utcnow()
        token = tokens.new_token()
        async with self.runtime.sessionmaker() as session, session.begin():
            repository = ConsoleSessionRepository(session)
            await repository.remove_expired(now)
            await repository.add(
                ConsoleSession(
                    token_digest=tokens.token_digest(token),
                    sealed_key=tokens.seal(token, api_key.strip()),
                    key_public_id=principal.public_id,
                    created_at=now,
                    expires_at=now + self.lifetime,
                )
            )
        return token

    async def admit(self, token: str, *, now: datetime | None = None) -> Principal | None:
        """The session's key, checked as the API checks a reading key; None once the session or key is not valid.

        Every console page reads, so this is the check of every request; a route that needs more
        also checks ``grants`` (as ``authorize`` does) for its own scope.
        """
        async with self.runtime.sessionmaker() as session:
            row = await ConsoleSessionRepository(session).get_live(tokens.token_digest(token), now or utcnow())
            sealed = row.sealed_key if row is not None else None
        if sealed is None:
            return None
        try:
            return await authorize(self.runtime, credentials_for(tokens.unseal(token, sealed)), Scope.READ)
        except (UnauthorizedError, ForbiddenError):
            await self.sign_out(token)
            return None

    async def sign_out(self, token: str) -> None:
        async with self.runtime.sessionmaker() as session, session.begin():
            await ConsoleSessionRepository(session).remove(tokens.token_digest(token))
