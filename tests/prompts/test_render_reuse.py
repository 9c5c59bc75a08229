"""A render is reused for the same version and variables, only where that cannot change what is served."""

from __future__ import annotations

from typing import Any

from litestar import Litestar

from registry.prompts.catalog import _REUSE_TRIAL, PromptCatalog, RenderReuse
from tests.api import Client, Headers, create_prompt, create_version, promote


async def render(client: Client, admin: Headers, name: str, variables: dict[str, Any], **fields: Any) -> Any:
    response = await client.post(f"/v1/prompts/{name}/render", json={"variables": variables, **fields}, headers=admin)
    return response


def reuse_of(app: Litestar, name: str, version: int) -> RenderReuse:
    catalog: PromptCatalog = app.state.runtime.prompts
    entry: Any = catalog._entries[name]
    reuse: RenderReuse = entry.versions[version].reuse
    return reuse


async def test_the_same_variables_reuse_the_render_and_a_new_version_renders_anew(
    client: Client, admin: Headers, app: Litestar
) -> None:
    await create_prompt(client, admin, "greeting")
    await create_version(client, admin, "greeting", "Hello {{ name }}!")
    await promote(client, admin, "greeting", 1)
    first = await render(client, admin, "greeting", {"name": "Ann"})
    again = await render(client, admin, "greeting", {"name": "Ann"})
    other = await render(client, admin, "greeting", {"name": "Bo"})
    assert first.json() == again.json()
    assert again.json()["text"] == "Hello Ann!"
    assert other.json()["text"] == "Hello Bo!"
    reuse = reuse_of(app, "greeting", 1)
    assert (reuse.hits, reuse.misses) == (1, 2)

    await create_version(client, admin, "greeting", "Hi {{ name }}?")
    await promote(client, admin, "greeting", 2)
    changed = await render(client, admin, "greeting", {"name": "Ann"})
    assert (changed.json()["text"], changed.json()["version"]) == ("Hi Ann?", 2)


async def test_a_template_using_random_is_rendered_every_time(client: Client, admin: Headers, app: Litestar) -> None:
    await create_prompt(client, admin, "dice")
    await create_version(client, admin, "dice", "{{ range(1000)|list|random }} {{ name }}")
    await promote(client, admin, "dice", 1)
    texts = {(await render(client, admin, "dice", {"name": "Ann"})).json()["text"] for _ in range(20)}
    assert len(texts) > 1  # the same 20 draws of 1,000 would be a one-in-10^57 chance
    assert reuse_of(app, "dice", 1).hits == 0


async def test_a_printed_address_is_not_reused(client: Client, admin: Headers, app: Litestar) -> None:
    await create_prompt(client, admin, "address")
    await create_version(client, admin, "address", "{{ cycler(1, 2) }} {{ name }}")
    await promote(client, admin, "address", 1)
    for _ in range(3):
        assert " at 0x" in (await render(client, admin, "address", {"name": "Ann"})).json()["text"]
    assert reuse_of(app, "address", 1).hits == 0


async def test_variables_of_other_types_and_invalid_ones_are_rendered_every_time(
    client: Client, admin: Headers, app: Litestar
) -> None:
    await create_prompt(client, admin, "count")
    schema = {"properties": {"n": {"type": ["number", "boolean", "string"], "maxLength": 3}}, "required": ["n"]}
    await create_version(client, admin, "count", "n={{ n }}", input_schema=schema)
    await promote(client, admin, "count", 1)
    texts = [(await render(client, admin, "count", {"n": value})).json()["text"] for value in (1, True, 1.0, 1)]
    assert texts == ["n=1", "n=True", "n=1.0", "n=1"]  # 1, True and 1.0 are equal keys in Python
    for _ in range(2):
        assert (await render(client, admin, "count", {"n": "long"})).status_code == 422
    assert reuse_of(app, "count", 1).hits == 0


async def test_reuse_stops_for_a_version_whose_variables_do_not_repeat(
    client: Client, admin: Headers, app: Litestar
) -> None:
    await create_prompt(client, admin, "unique")
    await create_version(client, admin, "unique", "Hello {{ name }}!")
    await promote(client, admin, "unique", 1)
    for i in range(_REUSE_TRIAL):
        assert (await render(client, admin, "unique", {"name": f"n{i}"})).json()["text"] == f"Hello n{i}!"
    reuse = reuse_of(app, "unique", 1)
    assert not reuse.on
    assert (await render(client, admin, "unique", {"name": "n0"})).json()["text"] == "Hello n0!"
    assert (reuse.hits, reuse.misses) == (0, _REUSE_TRIAL)  # no longer looked up
