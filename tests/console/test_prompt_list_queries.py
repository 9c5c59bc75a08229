"""The console's prompt list reads every listed prompt's production and staging versions in one query."""

from __future__ import annotations

from registry.console.service import ConsoleService
from registry.lib.pagination import PageRequest
from registry.runtime import Runtime
from tests.conftest import AppClient
from tests.statements import statements_of_this_block


async def publish(client: AppClient, admin: dict[str, str], name: str, versions: int) -> None:
    """``versions`` versions; v1 in production and, with more than one, the last in staging."""
    assert (await client.post("/v1/prompts", json={"name": name}, headers=admin)).status_code == 201
    for number in range(1, versions + 1):
        body = {"kind": "text", "template": f"{name} {number}"}
        assert (await client.post(f"/v1/prompts/{name}/versions", json=body, headers=admin)).status_code == 201
    for number, state in [(1, "production"), (versions, "staging")][: 1 if versions == 1 else 2]:
        promoted = await client.post(
            f"/v1/prompts/{name}/versions/{number}/promote", json={"to": state, "expected_current": None}, headers=admin
        )
        assert promoted.status_code == 200, promoted.text


async def list_counting_statements(runtime: Runtime) -> tuple[list[tuple[str, int | None, int | None]], int]:
    with statements_of_this_block(runtime) as statements:
        async with runtime.sessionmaker() as session:
            listing = await ConsoleService(session, runtime.prompt_limits).list_prompts(
                PageRequest(limit=50, after=None), prefix="", tag=""
            )
    return [(row.name, row.production, row.staging) for row in listing.rows], len(statements)


async def test_the_prompt_list_reads_holders_in_one_query_whatever_the_number_of_prompts(
    client: AppClient, admin: dict[str, str]
) -> None:
    runtime: Runtime = client.app.state.runtime
    await publish(client, admin, "p-01", versions=1)
    await publish(client, admin, "p-02", versions=3)
    few, statements_for_few = await list_counting_statements(runtime)
    for number in range(3, 13):
        await publish(client, admin, f"p-{number:02d}", versions=2)
    await client.post("/v1/prompts", json={"name": "p-13"}, headers=admin)  # no versions at all

    many, statements_for_many = await list_counting_statements(runtime)

    assert few == [("p-01", 1, None), ("p-02", 1, 3)]
    assert many[:2] == few
    assert many[2:] == [*((f"p-{n:02d}", 1, 2) for n in range(3, 13)), ("p-13", None, None)]
    assert statements_for_many == statements_for_few
