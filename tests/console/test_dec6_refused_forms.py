"""A change the server refuses shows its form again with what was typed, not an empty form.

A promotion refused by its evaluation gate showed the dialog again with the reason (and an admin's override) gone; a
stop refused showed the form again with its reason gone and 'No winner' checked, so sending it again as it stood
stopped the experiment without the winner that was chosen.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import quote

import httpx

from tests.console.conftest import LiveRegistry
from tests.console.seed import create_prompt, create_version, promote, prompt_with_versions, states, unique
from tests.console.test_experiment_stop_refusal import StopForm, experiment_with_an_unpromotable_variant
from tests.evals.conftest import answers, dataset, ok

REASON = 'Ticket #42: <ship> & "go"'


async def sign_in(client: httpx.AsyncClient, key: str) -> None:
    """A console session over plain HTTP: the sign-in form's token, then the key."""
    form = await client.get("/console/login")
    signed = await client.post(
        "/console/login", data={"csrf": csrf_of(form.text), "next": "/console/prompts", "api_key": key}
    )
    assert signed.status_code == 303, signed.text


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def textarea(html: str, name: str) -> str:
    found = re.search(rf'<textarea[^>]* name="{name}"[^>]*>(.*?)</textarea>', html, re.S)
    assert found is not None, f"no textarea {name}"
    return unescape(found.group(1))


async def test_a_promotion_the_gate_refuses_keeps_the_reason_and_override_typed(live: LiveRegistry) -> None:
    prompt, data = unique("gated/greeting"), unique("gate-data")
    path = f"/console/prompts/{quote(prompt, safe='')}/versions/1/promote"
    async with live.api() as api:
        await create_prompt(api, prompt)
        await create_version(api, prompt, "Hello {{ answer }}")
        headers = dict(api.headers)
        await dataset(api, headers, data, answers(("a", "a")))
        gate = {"dataset": {"name": data}, "min_pass_rate": 0.9}  # no run yet: the gate is not met
        await ok(await api.put(f"/v1/prompts/{quote(prompt, safe='')}/gates/production", json=gate))

    for role, override in (("alice", ""), ("admin", "   ")):
        async with live.http() as client:
            await sign_in(client, live.keys[role])
            dialog = await client.get(f"{path}?to=production")
            refused = await client.post(
                path,
                data={"csrf": csrf_of(dialog.text), "to": "production", "reason": REASON, "override_gate": override},
            )
            assert refused.status_code == 422, refused.text
            assert "The promotion was refused" in refused.text
            assert textarea(refused.text, "reason") == REASON
            if role == "admin":
                assert textarea(refused.text, "override_gate") == ""  # blank is no override: nothing to keep
    async with live.api() as api:
        assert await states(api, prompt) == {1: "draft"}


async def test_a_refused_stop_keeps_the_reason_typed(live: LiveRegistry) -> None:
    async with live.api() as api:
        _, key = await experiment_with_an_unpromotable_variant(api)
    async with live.http() as client:
        await sign_in(client, live.keys["alice"])
        page = await client.get(f"/console/experiments/{key}/stop")
        refused = await client.post(
            f"/console/experiments/{key}/stop",
            data={"csrf": csrf_of(page.text), "winner": "treatment", "reason": REASON},
        )
    assert refused.status_code == 409
    assert textarea(refused.text, "reason") == REASON
    # The refused winner is not offered, so no winner is checked rather than a variant the stop refuses.
    shown = StopForm(refused.text)
    assert [value for value, attrs in shown.radios.items() if "checked" in attrs] == [""]


async def test_a_rollback_with_a_blank_reason_is_refused_on_its_dialog(live: LiveRegistry) -> None:
    """A reason of spaces passed the browser's ``required`` and the rollback was recorded with an empty reason, which
    the API itself refuses; now the dialog comes back saying a reason is needed, and nothing moves."""
    async with live.api() as api:
        prompt = await prompt_with_versions(api, "blank-reason/greeting", 2)
        await promote(api, prompt, 2, "production", 1)
    base = f"/console/prompts/{quote(prompt, safe='')}"
    async with live.http() as client:
        await sign_in(client, live.keys["alice"])
        dialog = await client.get(f"{base}/rollback")
        refused = await client.post(
            f"{base}/rollback",
            data={"csrf": csrf_of(dialog.text), "version": "1", "expected_current": "2", "reason": " \n "},
        )
    assert refused.status_code == 422
    assert "Give the reason production goes back" in refused.text
    assert 'aria-describedby="form-error"' in refused.text
    async with live.api() as api:
        assert await states(api, prompt) == {1: "archived", 2: "production"}
