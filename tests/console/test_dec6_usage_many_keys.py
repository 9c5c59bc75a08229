"""The usage page lists the budget of every key, past the first five hundred too (on PostgreSQL).

The page read the first 500 keys for its key names and its budgets table: a budget set on any later key was left out
of "Budgets this month", and its usage by key showed no name.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.auth.service import ApiKeyService
from registry.console.service import KEYS_PAGE
from registry.db.engine import create_sessionmaker
from tests.api import Client, Headers
from tests.console.test_sessions_postgres import sign_in


async def test_the_budget_of_a_key_past_the_first_page_of_keys_is_listed(
    client: Client, admin: Headers, clean_database: AsyncEngine
) -> None:
    async with create_sessionmaker(clean_database)() as session, session.begin():
        keys = ApiKeyService(session)
        for i in range(KEYS_PAGE):
            await keys.create_key(f"filler-{i}", [Scope.READ], Actor(name="tests"))
        last, _ = await keys.create_key("the-last-key", [Scope.READ], Actor(name="tests"))
    budget = await client.put(f"/v1/keys/{last.public_id}/budget", json={"monthly_tokens": 1000}, headers=admin)
    assert budget.status_code == 200, budget.text

    await sign_in(client, admin["Authorization"].removeprefix("Bearer "))
    page = await client.get("/console/usage")
    assert page.status_code == 200
    assert "No key has a budget" not in page.text
    budgets = page.text.split('id="budgets"', 1)[1].split("</table>", 1)[0]
    assert f'<a href="/console/keys/{last.public_id}">the-last-key</a>' in budgets
