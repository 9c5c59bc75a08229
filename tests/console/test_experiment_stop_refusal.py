"""The console's stop form and a winner the stop refuses (tests/experiments/test_archived_winner.py).

A variant whose version is archived and was never in production cannot win: the form shows it, not selectable, with
the service's reason beside it, and offers the others (one archived after it was in production included: a rollback
brings it back). A stop that names it anyway is refused as the API refuses it, with nothing written.
"""

from __future__ import annotations

from html.parser import HTMLParser

import httpx

from tests.console.conftest import Console, LiveRegistry, check_page
from tests.console.seed import create_prompt, create_version, history, promote, states, unique
from tests.console.test_experiment_pages import definition
from tests.experiments.test_archived_winner import REFUSAL

UNPROMOTABLE = "version 2 is archived and was never in production, so it cannot be promoted"
STATES = {1: "archived", 2: "archived", 3: "production"}


async def experiment_with_an_unpromotable_variant(api: httpx.AsyncClient) -> tuple[str, str]:
    """A running experiment on a prompt's versions 1 (``control``), 2 (``treatment``) and 3 (``former``).

    Version 3 took production from version 1 while it ran (version 1 archived, once in production: it may win), and
    version 2 was archived never having been in production (it cannot).
    """
    prompt, metric, key = unique("stop-form/greeting"), unique("replied"), unique("unpromotable-winner")
    await create_prompt(api, prompt)
    for template in ("Hello {{ name }}", "Hi {{ name }}!", "Hey {{ name }}."):
        await create_version(api, prompt, template)
    await promote(api, prompt, 1, "production", None)
    assert (await api.post("/v1/metrics", json={"key": metric, "kind": "binomial"})).status_code == 201
    variants = [
        {"key": "control", "prompt_version": 1},
        {"key": "treatment", "prompt_version": 2},
        {"key": "former", "prompt_version": 3},
    ]
    body = {"key": key, "prompt": prompt, "variants": variants, "primary_metric": metric}
    assert (await api.post("/v1/experiments", json=body)).status_code == 201
    assert (await api.post(f"/v1/experiments/{key}/start")).status_code == 200
    await promote(api, prompt, 3, "production", 1)
    await promote(api, prompt, 2, "archived", None, reason="withdrawn")
    assert await states(api, prompt) == STATES
    return prompt, key


class StopForm(HTMLParser):
    """A served stop form: its winner radios (value to attributes), and the text of its alert and of each span with
    an id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.radios: dict[str, dict[str, str | None]] = {}
        self.texts: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, the text's key or None), innermost last
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input":
            if found.get("type") == "radio" and found.get("name") == "winner":
                self.radios[found.get("value") or ""] = found
            return
        text = "alert" if found.get("role") == "alert" else found.get("id") if tag == "span" else None
        if text is not None:
            self.texts[text] = ""
        self._open.append((tag, text))

    def handle_endtag(self, tag: str) -> None:
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, text in self._open:
            if text is not None:
                self.texts[text] += data

    def offered(self) -> list[str]:
        return [value for value, attrs in self.radios.items() if "disabled" not in attrs]


async def test_the_stop_form_does_not_offer_a_variant_archived_and_never_in_production(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        _, key = await experiment_with_an_unpromotable_variant(api)
    page = await console.signed_in("alice")

    served = await page.goto(f"/console/experiments/{key}/stop")

    assert served.status == 200
    form = StopForm(await served.text())
    assert form.offered() == ["", "control", "former"]  # no winner first, and checked
    assert "checked" in form.radios[""]
    refused = form.radios["treatment"]
    assert "disabled" in refused
    assert form.texts[refused["aria-describedby"] or ""] == f"cannot win: {UNPROMOTABLE}"
    assert await page.get_by_role("radio", name="treatment").is_disabled()
    await check_page(page, "experiment-stop-unpromotable-variant")


async def test_a_stop_naming_that_variant_anyway_is_refused_with_nothing_written(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        prompt, key = await experiment_with_an_unpromotable_variant(api)
        before = await history(api, prompt)
    page = await console.signed_in("alice")
    await page.goto(f"/console/experiments/{key}/stop")
    csrf = await page.locator("input[name=csrf]").first.input_value()

    refused = await page.request.post(
        f"/console/experiments/{key}/stop", form={"csrf": csrf, "winner": "treatment"}, max_redirects=0
    )

    assert refused.status == 409
    shown = StopForm(await refused.text())
    assert shown.texts["alert"] == f"This cannot be done: variant 'treatment' cannot win: {REFUSAL}"
    assert shown.offered() == ["", "control", "former"]
    async with live.api() as api:
        after = await definition(api, key)
        assert (after["status"], after["winner"]) == ("running", None)
        assert await states(api, prompt) == STATES
        assert await history(api, prompt) == before
    # Stopping without a winner stays open, and leaves production as it is.
    await page.goto(f"/console/experiments/{key}/stop")
    await page.get_by_role("button", name="Stop experiment").click()
    assert await page.locator("p.notice").inner_text() == "The experiment is stopped."
    async with live.api() as api:
        assert (await definition(api, key))["status"] == "stopped"
        assert await states(api, prompt) == STATES
