"""Evaluations in the console: runs and their results, the start form, cancel, compare, datasets and gates.

A registry of its own (embedded SQLite, its in-process worker) completes on the evaluations' stand-in
backend, whose answer is the rendered prompt: a template ``{{ answer }}`` makes each item answer its
``answer`` variable, so which items pass is known before a run. Every number a page shows is checked
against the API's (``GET /v1/evals/runs/{id}``, ``GET /v1/evals/compare``) formatted as the console does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest

from registry.app import create_app
from registry.auth.keys import Scope
from registry.console.formatting import cost, estimate, p_value, percent
from registry.settings import BackendSettings, Settings
from tests.console.conftest import Console, LiveRegistry, _in_own_loop, _prepare, check_page, serve
from tests.console.seed import history, states, unique
from tests.console.test_prompts import tab_to
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run
from tests.evals.stand_in import StandIn

HOSTILE = "<script>alert('output')</script>"
HOSTILE_URL = "javascript:alert('url')"
QUOTES = "\"quoted\" & 'single'"


@pytest.fixture(scope="module")
def evals_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveRegistry, StandIn]]:
    stand_in = StandIn()
    backend, backend_thread, backend_url = serve(stand_in, lifespan="off", name="console-evals-stand-in")
    directory: Path = tmp_path_factory.mktemp("console-evals")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{directory / 'registry.db'}",
        redis_url=None,
        access_log=False,
        log_level="WARNING",
        bootstrap_admin_key=False,
        webhook_dispatch_interval_seconds=3600,
        api_key_cache_seconds=0,
        backends={"stand-in": BackendSettings(url=backend_url, max_retries=0)},
        eval_poll_seconds=0.02,
    )
    roles = {
        "admin": (Scope.ADMIN,),
        "alice": (Scope.READ, Scope.WRITE, Scope.PROMOTE),
        "reader": (Scope.READ,),
    }
    keys = _in_own_loop(lambda: _prepare(settings, roles))
    server, thread, url = serve(create_app(settings), lifespan="on", name="console-evals-live")
    try:
        yield LiveRegistry(url=url, keys=keys, fault_url=backend_url), stand_in
    finally:
        stand_in.released.set()
        server.should_exit = True
        thread.join(30)
        backend.should_exit = True
        backend_thread.join(30)


@pytest.fixture
def live_evals(evals_live: tuple[LiveRegistry, StandIn]) -> LiveRegistry:
    return evals_live[0]


@pytest.fixture
async def evals_console(browser: Any, live_evals: LiveRegistry) -> AsyncIterator[Console]:
    session = Console(browser, live_evals)
    yield session
    await session.close()
    assert session.watch.events == [], "a page ran script or reported errors"


async def api_get(api: httpx.AsyncClient, path: str) -> dict[str, Any]:
    return await ok(await api.get(path))


async def seeded(api: httpx.AsyncClient) -> dict[str, Any]:
    """A prompt with two versions (v2 answers with a trailing '!'), a hostile dataset, and a finished run of each:
    v1 passes items 1 and 3, v2 only item 5."""
    prompt = unique("support-answer")
    v1 = await publish(api, {}, prompt, template="{{ answer }}", prices=(2.0, 4.0))
    v2 = await publish(api, {}, prompt, template="{{ answer }}!", prices=(2.0, 4.0))
    name = unique("golden")
    await ok(await api.post("/v1/evals/datasets", json={"name": name, "description": f"{HOSTILE} {QUOTES}"}))
    items = answers(("yes", "yes"), ("no", "yes"), (HOSTILE, HOSTILE), (HOSTILE_URL, "other"), ("fine", "fine!"))
    number = await dataset(api, {}, name, items)
    base = await start_run(api, {}, prompt=prompt, version=v1, dataset={"name": name, "version": number})
    candidate = await start_run(api, {}, prompt=prompt, version=v2, dataset={"name": name, "version": number})
    return {
        "prompt": prompt,
        "dataset": name,
        "dataset_version": number,
        "base": await finished(api, {}, base["id"]),
        "candidate": await finished(api, {}, candidate["id"]),
    }


async def held(api: httpx.AsyncClient, prefix: str, *answered: str) -> tuple[str, int, str, int]:
    """A prompt and a dataset whose items the stand-in holds (answers starting "hold") until released."""
    prompt = unique(prefix)
    version = await publish(api, {}, prompt, template="{{ answer }}")
    name = unique("held")
    number = await dataset(api, {}, name, answers(*((answer, "x") for answer in answered)))
    return prompt, version, name, number


def interval_text(interval: dict[str, Any]) -> str:
    return f"{percent(interval['estimate'])} ({percent(interval['low'])} to {percent(interval['high'])})"


async def test_runs_list_and_run_page_show_the_api_numbers_and_hostile_content_as_text(
    evals_console: Console, live_evals: LiveRegistry
) -> None:
    async with live_evals.api() as api:
        seed = await seeded(api)
        base = await api_get(api, f"/v1/evals/runs/{seed['base']['id']}")
        failed_items = (await api_get(api, f"/v1/evals/runs/{base['id']}/items?failed=true"))["items"]
    assert (base["status"], base["items_done"], base["items_passed"]) == ("completed", 5, 2)

    page = await evals_console.signed_in("alice")
    await page.get_by_role("link", name="Evaluations").click()
    await page.wait_for_url("**/console/evals")
    await page.get_by_label("Prompt").fill(seed["prompt"])
    await page.get_by_label("Status").select_option("completed")
    await page.get_by_role("button", name="Filter").click()
    rows = page.locator("#runs tbody tr")
    assert await rows.count() == 2
    row = page.locator("#runs tbody tr", has=page.get_by_role("link", name=f"Run {base['id']}", exact=True))
    cells = row.get_by_role("cell")
    assert await cells.nth(5).inner_text() == "5 / 5"
    assert await cells.nth(6).inner_text() == interval_text(base["pass_rate_interval"])
    assert await cells.nth(7).inner_text() == cost(base["cost"])
    assert f"{seed['dataset']}@{seed['dataset_version']}" in await cells.nth(3).inner_text()
    await check_page(page, "evals-list")

    await row.get_by_role("link", name=f"Run {base['id']}").click()
    await page.wait_for_url(f"**/console/evals/runs/{base['id']}")
    assert await page.locator("#pass-rate").inner_text() == f"{interval_text(base['pass_rate_interval'])}\n2 passed"
    mean = base["mean_score_interval"]
    assert (
        await page.locator("#mean-score").inner_text()
        == f"{estimate(mean['estimate'])} ({estimate(mean['low'])} to {estimate(mean['high'])})"
    )
    assert (await page.locator("#cost").inner_text()).startswith(cost(base["cost"]))
    assert await page.locator("#scorers tbody tr").first.inner_text() == "exact_match\texact_match\t2 / 5\t40.00%"
    outputs = await page.locator("#items td.output").all_inner_texts()
    assert outputs[2] == HOSTILE  # shown as text: the page ran no script
    assert outputs[3] == HOSTILE_URL
    assert await page.locator("#items a").count() == 0  # a javascript: answer is never a link
    # Finished: no cancel control, and no reload hint.
    assert await page.get_by_role("button", name="Cancel run").count() == 0
    await check_page(page, "eval-run")

    await page.get_by_role("link", name="Failed only").click()
    await page.wait_for_url("**?failed=true")
    shown = [int(text) for text in await page.locator("#items tbody tr td:first-child").all_inner_texts()]
    assert shown == [item["position"] for item in failed_items] == [2, 4, 5]
    await check_page(page, "eval-run-failed")


async def test_compare_shows_the_paired_tests_and_the_items_that_changed(
    evals_console: Console, live_evals: LiveRegistry
) -> None:
    async with live_evals.api() as api:
        seed = await seeded(api)
        base, candidate = seed["base"]["id"], seed["candidate"]["id"]
        compared = (await api_get(api, f"/v1/evals/compare?base={base}&candidate={candidate}"))["comparison"]
    page = await evals_console.signed_in("reader")
    await page.goto(f"/console/evals/runs/{candidate}")
    await page.get_by_label("Compare with run").fill(str(base))
    await page.get_by_role("button", name="Compare").click()
    await page.wait_for_url(f"**/console/evals/compare?candidate={candidate}&base={base}")
    assert (await page.locator("#mcnemar").inner_text()).startswith(p_value(compared["mcnemar_p"]))
    assert (await page.locator("#paired-t").inner_text()).startswith(p_value(compared["t_p"]))
    low, high = compared["mean_difference_ci"]
    assert (
        await page.locator("#mean-difference").inner_text()
        == f"{estimate(compared['mean_difference'])} ({estimate(low)} to {estimate(high)})"
    )
    changed = [int(text) for text in await page.locator("#changed tbody tr td:first-child").all_inner_texts()]
    assert changed == sorted(compared["regressed"]) + sorted(compared["improved"])
    assert changed == [1, 3, 5]
    assert HOSTILE + "!" in await page.locator("#changed").inner_text()
    await check_page(page, "eval-compare")


async def test_datasets_list_version_preview_and_downloads(evals_console: Console, live_evals: LiveRegistry) -> None:
    async with live_evals.api() as api:
        seed = await seeded(api)
        name, number = seed["dataset"], seed["dataset_version"]
        exported = {
            fmt: (await api.get(f"/v1/evals/datasets/{name}/versions/{number}/export?format={fmt}")).content
            for fmt in ("csv", "jsonl")
        }
    page = await evals_console.signed_in("reader")
    await page.goto("/console/evals")
    await page.get_by_role("link", name="Datasets").click()
    await page.get_by_label("Name starts with").fill(name)
    await page.get_by_role("button", name="Filter").click()
    assert await page.locator("#datasets").get_by_text(f"{HOSTILE} {QUOTES}").count() == 1
    await check_page(page, "eval-datasets")
    await page.get_by_role("link", name=name).click()
    await check_page(page, "eval-dataset")
    await page.get_by_role("link", name=f"v{number}", exact=True).click()
    await page.wait_for_url(f"**/versions/{number}")
    assert await page.locator("#dataset-items tbody tr").count() == 5
    assert HOSTILE in await page.locator("#dataset-items").inner_text()
    await check_page(page, "eval-dataset-version")
    for label, fmt in (("Download CSV", "csv"), ("Download JSONL", "jsonl")):
        href = await page.get_by_role("link", name=label).get_attribute("href")
        downloaded = await page.request.get(href or "")
        assert downloaded.status == 200
        assert "attachment" in downloaded.headers["content-disposition"]
        assert await downloaded.body() == exported[fmt]


async def test_start_a_run_from_the_form_then_cancel_it_with_the_keyboard(
    evals_console: Console, evals_live: tuple[LiveRegistry, StandIn]
) -> None:
    live, stand_in = evals_live
    stand_in.released.clear()
    async with live.api() as api:
        prompt, version, name, number = await held(api, "support-hold", "hold one", "hold two", "hold three")
        before = len((await api_get(api, f"/v1/evals/runs?prompt={quote(prompt, safe='')}"))["items"])
    page = await evals_console.signed_in("alice")
    await page.goto(f"/console/prompts/{quote(prompt, safe='')}")
    await page.get_by_role("link", name=f"Evaluate v{version}").click()
    assert await page.get_by_label("Prompt", exact=True).input_value() == prompt
    assert await page.get_by_label("Prompt version").input_value() == str(version)

    # A refused form says why, keeps what was typed and starts nothing.
    await page.get_by_label("Dataset", exact=True).fill(name)
    await page.get_by_label("More scorers").fill('[{"kind": "nonsense"}')
    await page.get_by_role("button", name="Start run").click()
    assert "More scorers is not JSON" in await page.get_by_role("alert").inner_text()
    await page.get_by_label("More scorers").fill('{"kind": "nonsense"}')
    await page.get_by_role("button", name="Start run").click()
    assert "scorers[1].kind" in await page.get_by_role("alert").inner_text()
    assert await page.get_by_label("Dataset", exact=True).input_value() == name
    await check_page(page, "eval-new-refused")
    async with live.api() as api:
        assert len((await api_get(api, f"/v1/evals/runs?prompt={quote(prompt, safe='')}"))["items"]) == before

    await page.get_by_label("More scorers").fill('{"kind": "contains", "values": ["hold"]}')
    await page.get_by_label("Dataset version").fill(str(number))
    await page.get_by_label("Concurrency").fill("2")
    await page.get_by_label("Pass rule", exact=True).select_option("min_passed")
    await page.get_by_label("Pass rule value").fill("1")
    await check_page(page, "eval-new")
    await page.get_by_role("button", name="Start run").click()
    await page.wait_for_url("**/console/evals/runs/*")
    run_id = int(page.url.rsplit("/", 1)[1])
    async with live.api() as api:
        run = await api_get(api, f"/v1/evals/runs/{run_id}")
    assert (run["prompt"], run["version"], run["dataset"], run["dataset_version"]) == (prompt, version, name, number)
    assert [s["kind"] for s in run["scorers"]] == ["exact_match", "contains"]
    assert (run["pass_rule"], run["concurrency"], run["created_by"]) == ({"min_passed": 1}, 2, "alice")
    assert await page.get_by_role("link", name="Reload progress").count() == 1
    await check_page(page, "eval-run-running")

    await tab_to(page, page.get_by_role("button", name="Cancel run"))
    await page.keyboard.press("Enter")
    await page.wait_for_url("**?cancelled=true")
    assert await page.get_by_role("status").first.inner_text() == "The run is cancelled."
    stand_in.released.set()
    async with live.api() as api:
        assert (await api_get(api, f"/v1/evals/runs/{run_id}"))["status"] == "cancelled"


async def test_a_version_without_a_config_is_started_with_the_config_named_in_the_form(
    evals_console: Console, live_evals: LiveRegistry
) -> None:
    async with live_evals.api() as api:
        lender = unique("lender")
        await publish(api, {}, lender)  # config {lender}-config v1 on the stand-in
        prompt = unique("bare")
        await ok(await api.post("/v1/prompts", json={"name": prompt}))
        content = {"kind": "chat", "messages": [{"role": "user", "content": "{{ answer }}"}]}
        version = (await ok(await api.post(f"/v1/prompts/{quote(prompt, safe='')}/versions", json=content)))["version"]
        name = unique("bare-cases")
        await dataset(api, {}, name, answers(("y", "y")))
    page = await evals_console.signed_in("alice")
    await page.goto(f"/console/evals/new?{urlencode({'prompt': prompt, 'version': version, 'dataset': name})}")

    await page.get_by_role("button", name="Start run").click()
    assert "links no model config" in await page.get_by_role("alert").inner_text()
    await page.locator("#f-config").fill(f"{lender}-config")
    await page.locator("#f-config-version").fill("1")
    await page.get_by_role("button", name="Start run").click()
    await page.wait_for_url("**/console/evals/runs/*")

    run_id = int(page.url.rsplit("/", 1)[1])
    async with live_evals.api() as api:
        run = await finished(api, {}, run_id)
    assert (run["config"], run["config_version"], run["items_passed"]) == (f"{lender}-config", 1, 1)
    assert f"with {lender}-config@1 on" in await page.locator("main").inner_text()
    await page.get_by_role("link", name="Start a similar run").click()
    assert await page.locator("#f-config").input_value() == f"{lender}-config"
    assert await page.locator("#f-config-version").input_value() == "1"


async def test_a_read_only_key_sees_no_run_controls_and_forged_posts_are_refused(
    evals_console: Console, evals_live: tuple[LiveRegistry, StandIn]
) -> None:
    live, stand_in = evals_live
    stand_in.released.clear()
    async with live.api() as api:
        prompt, version, name, _ = await held(api, "support-readonly", "hold on")
        run = await start_run(api, {}, prompt=prompt, version=version, dataset={"name": name})
    try:
        page = await evals_console.signed_in("reader")
        await page.goto("/console/evals")
        assert await page.get_by_role("link", name="Start a run").count() == 0
        await page.goto(f"/console/evals/runs/{run['id']}")
        assert await page.get_by_role("button", name="Cancel run").count() == 0
        assert await page.get_by_role("link", name="Start a similar run").count() == 0
        opened = await page.goto("/console/evals/new")
        assert opened is not None
        assert opened.status == 403
        await page.goto(f"/console/prompts/{quote(prompt, safe='')}")
        assert await page.get_by_role("link", name=f"Evaluate v{version}").count() == 0
        # The session's own valid CSRF token: the scope check still refuses.
        csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
        forged = await page.request.post(
            f"/console/evals/runs/{run['id']}/cancel", form={"csrf": csrf or ""}, max_redirects=0
        )
        assert forged.status == 403
        started = await page.request.post(
            "/console/evals/new",
            form={
                "csrf": csrf or "",
                "prompt": prompt,
                "version": str(version),
                "dataset": name,
                "common": "exact_match",
            },
            max_redirects=0,
        )
        assert started.status == 403
        # A key that may cancel, without the session's token: refused too.
        alice = await evals_console.signed_in("alice")
        tokenless = await alice.request.post(
            f"/console/evals/runs/{run['id']}/cancel", form={"csrf": "0" * 64}, max_redirects=0
        )
        assert tokenless.status == 403
        async with live.api() as api:
            assert (await api_get(api, f"/v1/evals/runs/{run['id']}"))["status"] in ("queued", "running")
            runs = (await api_get(api, f"/v1/evals/runs?prompt={quote(prompt, safe='')}"))["items"]
            assert [r["id"] for r in runs] == [run["id"]]
    finally:
        stand_in.released.set()


async def test_the_promote_dialog_shows_the_gate_and_its_evidence_and_an_admin_may_override(
    evals_console: Console, live_evals: LiveRegistry
) -> None:
    async with live_evals.api() as api:
        seed = await seeded(api)
        prompt, name = seed["prompt"], seed["dataset"]
        gate = {"dataset": {"name": name}, "min_pass_rate": 0.8, "scorers": [{"kind": "exact_match"}]}
        await ok(await api.put(f"/v1/prompts/{quote(prompt, safe='')}/gates/production", json=gate))
        low = {"dataset": {"name": name, "version": seed["dataset_version"]}, "min_pass_rate": 0.3}
        await ok(await api.put(f"/v1/prompts/{quote(prompt, safe='')}/gates/staging", json=low))
    base_run = seed["base"]["id"]
    prompt_url = f"/console/prompts/{quote(prompt, safe='')}"

    page = await evals_console.signed_in("alice")
    await page.goto(prompt_url)
    assert await page.locator("#gates tbody tr").all_inner_texts() == [
        f"staging\t{name}@{seed['dataset_version']}\t30.00%\tnot required\tany scoring",
        f"production\t{name}@latest\t80.00%\tnot required\texact_match",
    ]
    await check_page(page, "prompt-gates")
    # v1 passed 40% of the items: enough for staging, whose dialog says so, and the promotion goes through.
    await page.get_by_role("link", name="Promote v1 to staging").click()
    assert await page.locator("#gate-verdict").inner_text() == "v1 meets the gate."
    await check_page(page, "promote-gate-met")
    await page.get_by_role("button", name="Promote to staging").click()
    await page.wait_for_url("**?changed=1&to=staging")
    await page.get_by_role("link", name="Promote v1 to production").click()
    assert " scored with exact_match with a pass rate of at least 80" in await page.locator("#gate-rule").inner_text()
    verdict = page.locator("#gate-verdict")
    assert "v1 does not meet the gate yet." in await verdict.inner_text()
    assert f"run {base_run}" in await verdict.inner_text()
    assert await page.get_by_label("Override the gate with a reason").count() == 0
    await check_page(page, "promote-gate-unmet")
    async with page.expect_response(f"**{prompt_url}/versions/1/promote") as answer:
        await page.get_by_role("button", name="Promote to production").click()
    assert (await answer.value).status == 422
    assert "The promotion was refused" in await page.locator("#gate-verdict").inner_text()
    await page.get_by_text("Evidence", exact=True).click()
    assert f'"run_id": {base_run}' in await page.locator("pre.evidence").inner_text()
    await check_page(page, "promote-gate-refused")
    # A forged override from a key without the admin scope is refused as the API refuses it.
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    forged = await page.request.post(
        f"{prompt_url}/versions/1/promote",
        form={"csrf": csrf or "", "to": "production", "override_gate": "I say so"},
        max_redirects=0,
    )
    assert forged.status == 403
    async with live_evals.api() as api:
        assert (await states(api, prompt))[1] == "staging"

    admin = await evals_console.signed_in("admin")
    await admin.goto(f"{prompt_url}/versions/1/promote?to=production")
    await admin.get_by_label("Override the gate with a reason").fill("Known gap; fixed in v3")
    await admin.get_by_role("button", name="Promote to production").click()
    await admin.wait_for_url("**?changed=1&to=production")
    async with live_evals.api() as api:
        assert (await states(api, prompt))[1] == "production"
        assert "gate overridden: Known gap; fixed in v3" in (await history(api, prompt))[0]["reason"]
