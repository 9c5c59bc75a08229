"""The console's stop form and a winner the production gate refuses (registry/evals/gates.py).

A variant whose version (or the version its win would create, for a variant that ran another config) lacks the
evidence the prompt's production gate asks for is shown, not selectable, with the gate's refusal beside it, in the
words the promotion refusal gives; the variants that meet it, and the production version itself (whose win changes
nothing), are offered. A stop that names a refused variant anyway is refused as the stop refuses it, with nothing
written: the gate is judged again when the stop is sent, as its evidence may have changed since the form was read.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import history, promote, states, unique
from tests.console.test_evals_pages import evals_console, evals_live, live_evals
from tests.console.test_experiment_pages import definition
from tests.console.test_experiment_stop_refusal import StopForm
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run

__all__ = ["evals_console", "evals_live", "live_evals"]  # the fixtures of a registry that runs evaluations

STATES = {1: "production", 2: "draft", 3: "draft"}


async def promotion_refusal(api: httpx.AsyncClient, prompt: str, version: int) -> str:
    """What the API answers a promotion of ``version`` to production with (the gate's refusal)."""
    refused = await api.post(
        f"/v1/prompts/{quote(prompt, safe='')}/versions/{version}/promote",
        json={"to": "production", "expected_current": 1},
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"].endswith("/gate_failed")
    detail: str = refused.json()["detail"]
    return detail


async def experiment_with_a_gated_variant(api: httpx.AsyncClient) -> dict[str, Any]:
    """A running experiment on a prompt whose production gate asks for a pass rate of 80% on a dataset.

    ``control`` is version 1, in production; ``exclaim`` is version 2, whose run passes every item; ``question`` is
    version 3, whose run passes none; ``exclaim-on-2`` runs version 2 with another config version (all three link the
    first), which no run has evaluated: its win would create version 4, version 2 with that config.
    """
    prompt, metric, key = unique("gated-winner"), unique("replied"), unique("gated-winner")
    config = f"{prompt}-config"
    for template in ("{{ answer }}", "{{ answer }}!", "{{ answer }}?"):
        await publish(api, {}, prompt, template=template)
    await promote(api, prompt, 1, "production", None)
    name = unique("gate-golden")
    number = await dataset(api, {}, name, answers(("yes", "yes!"), ("fine", "fine!")))
    for version in (2, 3):
        run = await start_run(api, {}, prompt=prompt, version=version, dataset={"name": name, "version": number})
        assert (await finished(api, {}, run["id"]))["status"] == "completed"
    gate = {"dataset": {"name": name}, "min_pass_rate": 0.8}
    await ok(await api.put(f"/v1/prompts/{quote(prompt, safe='')}/gates/production", json=gate))
    other = {"backend": "stand-in", "model": "echo-2", "params": {"temperature": 0, "max_tokens": 64}}
    assert (await ok(await api.post(f"/v1/configs/{config}/versions", json=other)))["version"] == 2
    await ok(await api.post("/v1/metrics", json={"key": metric, "kind": "binomial"}))
    variants = [
        {"key": "control", "prompt_version": 1},
        {"key": "exclaim", "prompt_version": 2},
        {"key": "question", "prompt_version": 3},
        {"key": "exclaim-on-2", "prompt_version": 2, "config": {"name": config, "version": 2}},
    ]
    body = {"key": key, "prompt": prompt, "variants": variants, "primary_metric": metric}
    await ok(await api.post("/v1/experiments", json=body))
    await ok(await api.post(f"/v1/experiments/{key}/start"))
    assert await states(api, prompt) == STATES
    return {
        "prompt": prompt,
        "key": key,
        "dataset": f"{name}@{number}",
        "config": config,
        "question": await promotion_refusal(api, prompt, 3),
    }


async def test_the_stop_form_shows_a_variant_the_gate_refuses_disabled_with_the_gates_reason(
    evals_console: Console, live_evals: LiveRegistry
) -> None:
    async with live_evals.api() as api:
        seed = await experiment_with_a_gated_variant(api)
    prompt, key = seed["prompt"], seed["key"]
    page = await evals_console.signed_in("alice")

    served = await page.goto(f"/console/experiments/{key}/stop")

    assert served.status == 200
    form = StopForm(await served.text())
    assert form.offered() == ["", "control", "exclaim"]
    offered = {key: form.texts[form.radios[key]["aria-describedby"] or ""] for key in ("control", "exclaim")}
    assert offered == {"control": "v1 stays production", "exclaim": "v2 becomes production"}
    refusals = {
        "question": seed["question"],
        "exclaim-on-2": f"prompt '{prompt}' version 4 may not enter production: no completed evaluation run of "
        f"version 4 or of same-content version 2 with config {seed['config']}@2 on dataset {seed['dataset']}",
    }
    for variant, refusal in refusals.items():
        radio = form.radios[variant]
        assert "disabled" in radio
        assert form.texts[radio["aria-describedby"] or ""] == f"cannot win: {refusal}"
        assert await page.get_by_role("radio", name=variant, exact=True).is_disabled()
    assert "pass rate" in seed["question"]
    await check_page(page, "experiment-stop-gated-variant")


async def test_a_stop_naming_a_gated_variant_anyway_is_refused_with_the_same_words_and_nothing_written(
    evals_console: Console, live_evals: LiveRegistry
) -> None:
    async with live_evals.api() as api:
        seed = await experiment_with_a_gated_variant(api)
        prompt, key = seed["prompt"], seed["key"]
        before = await history(api, prompt)
    page = await evals_console.signed_in("alice")
    served = StopForm(await (await page.goto(f"/console/experiments/{key}/stop")).text())
    csrf = await page.locator("input[name=csrf]").first.input_value()

    for variant in ("question", "exclaim-on-2"):
        refused = await page.request.post(
            f"/console/experiments/{key}/stop", form={"csrf": csrf, "winner": variant}, max_redirects=0
        )

        assert refused.status == 409
        shown = StopForm(await refused.text())
        reason = served.texts[served.radios[variant]["aria-describedby"] or ""].removeprefix("cannot win: ")
        assert shown.texts["alert"] == f"This cannot be done: {reason}"
        assert shown.offered() == ["", "control", "exclaim"]
    async with live_evals.api() as api:
        after = await definition(api, key)
        assert (after["status"], after["winner"]) == ("running", None)
        assert await states(api, prompt) == STATES
        assert await history(api, prompt) == before
