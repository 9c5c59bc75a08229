"""A key's holder writing its Authorization header many ways ('bearer', more spaces, a trailing tab): each
spelling was kept among the verified headers, whose table is cleared when full, and every other key's trust
with it; during a database outage that trust is all that lets a key in, so the others got 503."""

from __future__ import annotations

from typing import cast

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.auth.keys import Scope
from registry.auth.verifier import ApiKeyVerifier
from registry.lib.changes import ChangeBus
from tests.auth.test_key_verification_outage import (  # noqa: F401 - fixtures
    CACHE_SECONDS,
    STALE_SECONDS,
    Database,
    FakeClock,
    bus,
    database,
)
from tests.conftest import KeyFactory


async def test_spellings_of_one_key_do_not_push_the_others_out_of_the_outage_trust(
    database: Database,  # noqa: F811
    bus: ChangeBus,  # noqa: F811
    make_key: KeyFactory,
) -> None:
    clock = FakeClock()
    verifier = ApiKeyVerifier(
        cast("async_sessionmaker[AsyncSession]", database),
        bus,
        cache_seconds=CACHE_SECONDS,
        stale_seconds=STALE_SECONDS,
        max_entries=8,
        clock=clock,
    )
    other = (await make_key(Scope.READ, name="other"))["Authorization"]
    holder = (await make_key(Scope.READ, name="holder"))["Authorization"]
    key = holder.removeprefix("Bearer ")
    await verifier.authenticate(other)

    spellings = [
        f"{scheme}{' ' * spaces}{key}{tail}"
        for scheme in ("Bearer", "bearer", "BEARER")
        for spaces in (1, 2, 3)
        for tail in ("", " ", "\t")
    ]
    for spelling in spellings:  # each is still let in
        assert (await verifier.authenticate(spelling)).name == "holder"

    database.reachable = False
    clock.advance(CACHE_SECONDS + 1)  # past what the key cache keeps: the database would be asked
    assert (await verifier.authenticate(other)).name == "other"
    assert (await verifier.authenticate(holder)).name == "holder"
