"""A playground run form is claimed once on PostgreSQL too, also by two requests at once; its record expires."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.console import tokens
from registry.console.playground_controller import provide_playground
from tests.conftest import AppClient


async def test_a_run_form_is_claimed_once_by_requests_at_once_and_its_record_goes_when_a_sign_in_would(
    client: AppClient, clean_database: AsyncEngine
) -> None:
    runtime = client.app.state.runtime
    playground = provide_playground(runtime)
    lifetime = timedelta(minutes=runtime.settings.console_session_minutes)
    session, other = tokens.new_token(), tokens.new_token()
    now = datetime.now(UTC)

    claims = await asyncio.gather(*(playground.claim_run(session, "form-1", key="k", now=now) for _ in range(5)))
    assert sorted(claims) == [False, False, False, False, True]
    assert await playground.claim_run(session, "form-2", key="k", now=now)  # another page's form
    assert await playground.claim_run(other, "form-1", key="k", now=now)  # the same id in another session
    assert not await playground.claim_run(session, "form-1", key="k", now=now + lifetime - timedelta(seconds=1))
    async with clean_database.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM console_sessions"))).scalar_one() == 3

    # No form of that sign-in is sent after its lifetime; the records then go with the next claim.
    later = now + lifetime
    assert await playground.claim_run(session, "form-3", key="k", now=later)
    async with clean_database.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM console_sessions"))).scalar_one() == 1
