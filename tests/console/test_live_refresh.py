"""Pages of something still running refresh themselves (``static/live.js``): a running evaluation run, a rollout.

The browser's clock is Playwright's and stands still: a poll happens only when a test moves the clock on by
the page's interval, so every poll is counted (requests to the page's ``/live`` URL) and none is left to
chance. The evaluations' stand-in holds each item whose answer has a gate until the test opens it, so an
item finishes exactly when the test says.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import expect

from registry.app import create_app
from registry.auth.keys import Scope
from registry.console.evals import RUN_REFRESH_MS
from registry.console.formatting import percent
from registry.console.rollouts import ROLLOUT_REFRESH_MS
from registry.settings import BackendSettings, Settings
from tests.console.conftest import (
    SCREENSHOTS,
    Console,
    LiveRegistry,
    _in_own_loop,
    _prepare,
    check_page,
    serve,
    sign_in,
)
from tests.console.seed import prompt_with_versions, unique
from tests.evals.conftest import answers, dataset, finished, ok, publish, start_run
from tests.evals.stand_in import StandIn
from tests.waiting import eventually_async

HELD = 1_000_000  # more units than a test sends: the checker holds the step until a person moves it
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class GatedStandIn:
    """The evaluations' stand-in, except that an item answering a gated text waits until its gate opens."""

    stand_in: StandIn = field(default_factory=StandIn)
    gates: dict[str, threading.Event] = field(default_factory=dict)

    def gate(self, answer: str) -> threading.Event:
        return self.gates.setdefault(answer, threading.Event())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        messages = json.loads(body or b"{}").get("messages") or [{"content": ""}]
        gate = self.gates.get(messages[-1]["content"])
        if gate is not None:
            await asyncio.to_thread(gate.wait)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.stand_in(scope, replay, send)


@pytest.fixture(scope="module")
def gated_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveRegistry, GatedStandIn]]:
    backend = GatedStandIn()
    server_b, thread_b, backend_url = serve(backend, lifespan="off", name="console-live-stand-in")
    directory: Path = tmp_path_factory.mktemp("console-live")
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
    keys = _in_own_loop(lambda: _prepare(settings, {"admin": (Scope.ADMIN,), "alice": (Scope.READ, Scope.WRITE)}))
    server, thread, url = serve(create_app(settings), lifespan="on", name="console-live-registry")
    try:
        yield LiveRegistry(url=url, keys=keys, fault_url=backend_url), backend
    finally:
        for gate in backend.gates.values():
            gate.set()
        server.should_exit = True
        thread.join(30)
        server_b.should_exit = True
        thread_b.join(30)


@pytest.fixture
async def live_console(browser: Any, gated_live: tuple[LiveRegistry, GatedStandIn]) -> AsyncIterator[Console]:
    session = Console(browser, gated_live[0])
    yield session
    await session.close()
    assert session.watch.events == [], "a page ran script or reported errors"


def count_polls(page: Any, path: str) -> list[str]:
    """Every request the page makes to ``path`` (its live parts), as it makes them."""
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if urlsplit(request.url).path == path else None)
    return polls


async def still_clock(page: Any) -> None:
    """Playwright's clock in the page, standing still: timers fire only when the test runs the clock."""
    await page.clock.install(time=START)
    await pause_soon(page)


async def pause_soon(page: Any) -> None:
    """Stop the page's running clock a second past its own time, taken afresh if that second is already gone by
    when the browser gets the order (a busy machine: Playwright refuses to pause in the past)."""
    while True:
        now = await page.evaluate("Date.now()")
        try:
            await page.clock.pause_at(datetime.fromtimestamp(now / 1000, UTC) + timedelta(seconds=1))
            return
        except PlaywrightError as error:
            if "to the past" not in error.message:
                raise


async def settled(page: Any, polls: int) -> None:
    """Wait until the page has handled ``polls`` answers (and timed its next poll, if any)."""
    await expect(page.locator("[data-live-url]")).to_have_attribute("data-live-polls", str(polls))


async def polled(polls: list[str], count: int) -> None:
    """Wait until ``count`` polls are seen (Playwright reports a request a moment after the page makes it)."""

    async def seen() -> bool:
        return len(polls) == count

    await eventually_async(seen, f"poll {count}")


async def checked(page: Any, name: str, polls: list[str]) -> None:
    """``check_page`` with the clock running (axe times its own work), then the clock still again, no poll out."""
    await page.clock.resume()
    await check_page(page, name)
    await pause_soon(page)
    root = page.locator("[data-live-url]")
    await expect(root).not_to_have_attribute("data-live-busy", "")

    async def all_answered() -> bool:
        return await root.get_attribute("data-live-polls") == str(len(polls))

    await eventually_async(all_answered, "every poll answered")


@pytest.fixture
async def held_run(gated_live: tuple[LiveRegistry, GatedStandIn]) -> AsyncIterator[dict[str, Any]]:
    """A run of one item that the stand-in holds until the test is over: running all along."""
    live, backend = gated_live
    held = unique("held")
    gate = backend.gate(held)
    async with live.api() as api:
        run = await run_with_items(api, held)
    try:
        yield run
    finally:
        gate.set()


async def run_with_items(api: httpx.AsyncClient, *answered: str) -> dict[str, Any]:
    prompt = unique("live-run")
    version = await publish(api, {}, prompt, template="{{ answer }}")
    name = unique("live-cases")
    number = await dataset(api, {}, name, answers(*((answer, answer) for answer in answered)))
    return await start_run(api, {}, prompt=prompt, version=version, dataset={"name": name, "version": number})


async def items_done(api: httpx.AsyncClient, run_id: int, done: int) -> dict[str, Any]:
    """The run once the worker has recorded ``done`` items."""
    latest: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal latest
        latest = await ok(await api.get(f"/v1/evals/runs/{run_id}"))
        return bool(latest["items_done"] >= done)

    await eventually_async(reached, f"run {run_id} reaching {done} items")
    return latest


async def test_a_running_runs_page_shows_items_as_they_finish_then_the_end_and_polls_no_more(
    live_console: Console, gated_live: tuple[LiveRegistry, GatedStandIn]
) -> None:
    live, backend = gated_live
    second, third = unique("second"), unique("third")
    open_second, open_third = backend.gate(second), backend.gate(third)
    async with live.api() as api:
        run = await run_with_items(api, "first", second, third)
        await items_done(api, run["id"], 1)
    path = f"/console/evals/runs/{run['id']}"
    page = await live_console.signed_in("alice")
    polls = count_polls(page, f"{path}/live")
    await still_clock(page)
    await page.goto(path)
    note = page.locator("#run-live-note")
    assert await note.get_attribute("aria-live") == "polite"
    await expect(note).to_have_text(
        "This run is running: 1 of 3 items done, and the figures below are of those. "
        "This page updates as items finish.",
        use_inner_text=True,
    )
    assert await page.locator("#items tbody tr").count() == 1
    await checked(page, "eval-run-live-started", polls)

    # The figures change only at a poll, and a poll comes once the page's interval has passed.
    open_second.set()
    async with live.api() as api:
        progressed = await items_done(api, run["id"], 2)
    rate = progressed["pass_rate_interval"]
    await page.locator("#base").fill("12")  # typing in the compare form while the page refreshes
    await expect(page.locator("#run-summary .meter-line")).to_have_text("1 of 3 items 33.33%")
    before = len(polls)
    await page.clock.run_for(RUN_REFRESH_MS)
    await expect(page.locator("#run-summary .meter-line")).to_have_text("2 of 3 items 66.67%")
    await expect(note).to_contain_text("2 of 3 items done")
    await polled(polls, before + 1)
    assert await page.locator("#items tbody tr").count() == 2
    assert await page.locator("#pass-rate").inner_text() == (
        f"{percent(rate['estimate'])} ({percent(rate['low'])} to {percent(rate['high'])})\n2 passed"
    )
    await expect(page.locator("#base")).to_be_focused()
    assert await page.locator("#base").input_value() == "12"
    assert " ".join((await page.locator("h1").inner_text()).split()) == f"Run {run['id']} running"
    await checked(page, "eval-run-live-progress", polls)

    # The last item: the page shows the run finished, says so to a screen reader, and polls no more.
    await page.get_by_role("link", name="Start a similar run").focus()
    open_third.set()
    async with live.api() as api:
        assert (await finished(api, {}, run["id"]))["status"] == "completed"
    answered = int(await page.locator("[data-live-url]").get_attribute("data-live-polls") or 0)
    ended = len(polls) + 1
    await page.clock.run_for(RUN_REFRESH_MS)
    await settled(page, answered + 1)
    await polled(polls, ended)
    assert " ".join((await page.locator("h1").inner_text()).split()) == f"Run {run['id']} completed"
    await expect(note).to_have_text("This run is completed: 3 of 3 items done; the figures below are final.")
    await expect(page.locator("[data-live-url]")).to_have_attribute("data-live-state", "ended")
    assert await page.locator("#items tbody tr").count() == 3
    assert await page.get_by_role("button", name="Cancel run").count() == 0
    assert await page.get_by_role("link", name="Reload progress").count() == 0
    await expect(page.get_by_role("link", name="Start a similar run")).to_be_focused()
    await page.clock.run_for(RUN_REFRESH_MS * 30)
    assert len(polls) == ended
    await page.clock.resume()  # axe times its own work; the page has no timer left
    await check_page(page, "eval-run-live-finished")


async def test_polls_never_overlap_back_off_on_errors_and_stop_when_refused(
    live_console: Console, held_run: dict[str, Any]
) -> None:
    run = held_run
    live_path = f"/console/evals/runs/{run['id']}/live"
    page = await live_console.signed_in("alice")
    await still_clock(page)
    polls: list[str] = []  # counted as the route sees them: before the page can see any answer
    release = asyncio.Event()
    refusals = [0]  # answers still to refuse with 429
    gone = [False]  # answer 404, as to a run that no longer exists

    async def slow_or_refused(route: Any) -> None:
        polls.append(route.request.url)
        if gone[0]:
            await route.fulfill(status=404, body="gone")
            return
        if refusals[0]:
            refusals[0] -= 1
            await route.fulfill(status=429, body="slow down")
            return
        await release.wait()
        await route.continue_()

    await page.route(f"**{live_path}*", slow_or_refused)
    await page.goto(f"/console/evals/runs/{run['id']}")
    await expect(page.locator("[data-live-url]")).to_have_attribute("data-live-state", "on")

    # A slow answer: however long it takes, no second poll starts before it is in.
    await page.clock.run_for(RUN_REFRESH_MS)
    await expect(page.locator("[data-live-url]")).to_have_attribute("data-live-busy", "")
    await polled(polls, 1)
    await page.clock.run_for(RUN_REFRESH_MS * 5)
    assert len(polls) == 1
    release.set()
    await settled(page, 1)
    await page.clock.run_for(RUN_REFRESH_MS)
    await settled(page, 2)
    assert len(polls) == 2

    # Refused twice: the wait doubles each time, and is back to the interval after an answer.
    refusals[0] = 2
    for waited, answered in ((RUN_REFRESH_MS, 3), (RUN_REFRESH_MS * 2, 4)):
        await page.clock.run_for(waited)
        await settled(page, answered)
    await expect(page.locator("[data-live-url]")).to_have_attribute("data-live-wait", str(RUN_REFRESH_MS * 4))
    await page.clock.run_for(RUN_REFRESH_MS * 4 - 1)
    assert len(polls) == 4
    await page.clock.run_for(1)
    await settled(page, 5)
    await expect(page.locator("[data-live-url]")).to_have_attribute("data-live-wait", str(RUN_REFRESH_MS))

    # An answer that is not the parts (signed out, forbidden, gone): no more polls, and the page says to reload.
    gone[0] = True
    await page.clock.run_for(RUN_REFRESH_MS)
    await expect(page.locator("[data-live-url]")).to_have_attribute("data-live-state", "stopped")
    note = page.locator("#run-live-note")
    await expect(note).to_contain_text("Live updates stopped: reload the page to see more.", use_inner_text=True)
    await expect(note).not_to_contain_text("This page updates", use_inner_text=True)
    stopped = len(polls)
    assert stopped == 6
    await page.clock.run_for(RUN_REFRESH_MS * 30)
    assert len(polls) == stopped
    await page.unroute(f"**{live_path}*")


async def test_without_scripts_a_running_runs_page_says_to_reload_it(
    live_console: Console, held_run: dict[str, Any]
) -> None:
    live, run = live_console.live, held_run
    no_script = await live_console.browser.new_context(
        base_url=live.url, viewport={"width": 1280, "height": 800}, java_script_enabled=False
    )
    live_console.watch.attach(no_script)
    live_console.contexts.append(no_script)
    page = await no_script.new_page()
    await sign_in(page, live.keys["alice"])
    await page.goto(f"/console/evals/runs/{run['id']}")
    note = page.locator("#run-live-note")
    assert " ".join((await note.inner_text()).split()) == (
        "This run is running: 0 of 1 items done, and the figures below are of those. Reload the page to see more."
    )
    assert await page.get_by_role("link", name="Reload progress").count() == 1
    # No axe here: it is a script. The same markup is checked with scripts on, in the tests above.
    await page.screenshot(path=str(SCREENSHOTS / "eval-run-live-no-script.png"), full_page=True)


async def test_a_running_rollouts_page_shows_its_new_step_then_its_end_and_polls_no_more(
    console: Console, live: LiveRegistry
) -> None:
    async with live.api() as api:
        name = await prompt_with_versions(api, "support/live-rollout", 2)
        metric = unique("errors")
        assert (await api.post("/v1/metrics", json={"key": metric, "kind": "binomial"})).status_code == 201
        body = {
            "candidate_version": 2,
            "steps": [{"share": 0.1, "min_units": HELD}, {"share": 0.5, "min_units": HELD}, {"share": 1.0}],
            "guardrails": [{"metric": metric, "tolerance": 0.05, "relative": True}],
        }
        created = await api.post(f"/v1/prompts/{quote(name, safe='')}/rollouts", json=body)
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
    path = f"/console/rollouts/{rollout_id}"
    page = await console.signed_in("alice")
    polls = count_polls(page, f"{path}/live")
    await still_clock(page)
    await page.goto(path)
    note = page.locator("#rollout-live-note")
    assert await note.get_attribute("aria-live") == "polite"
    await expect(note).to_contain_text("This rollout is running at step 1 of 3, 10.00% to the candidate")
    await expect(note).to_contain_text("This page updates as the rollout moves.", use_inner_text=True)
    await expect(note).not_to_contain_text("Reload the page", use_inner_text=True)

    def steps() -> Any:
        return page.locator("#rollout-steps tbody tr td:last-child")

    await expect(steps()).to_have_text(["now", "—", "—"])
    await checked(page, "rollout-live-running", polls)

    async with live.api() as api:
        assert (await api.post(f"/v1/rollouts/{rollout_id}/advance")).status_code == 200
    before = len(polls)
    await page.clock.run_for(ROLLOUT_REFRESH_MS)
    await expect(steps()).to_have_text(["done", "now", "—"])
    await expect(note).to_contain_text("at step 2 of 3, 50.00% to the candidate")
    await polled(polls, before + 1)
    actions = page.locator("#rollout-events tbody tr td:nth-child(2)")
    await expect(actions).to_have_text(["started", "advanced"])

    async with live.api() as api:
        aborted = await api.post(f"/v1/rollouts/{rollout_id}/abort", json={"reason": "answers got longer"})
        assert aborted.status_code == 200
    await page.clock.run_for(ROLLOUT_REFRESH_MS)
    await expect(page.locator("#rollout-status")).to_have_text("aborted")
    await expect(page.locator("#rollout-reason")).to_have_text("answers got longer")
    await expect(note).to_have_text("This rollout has ended: aborted at step 2 of 3.")
    await expect(steps()).to_have_text(["done", "ended here", "—"])
    await expect(page.locator("[data-live-url]")).to_have_attribute("data-live-state", "ended")
    ended = before + 2
    await polled(polls, ended)
    await page.clock.run_for(ROLLOUT_REFRESH_MS * 30)
    assert len(polls) == ended
    await page.clock.resume()  # axe times its own work; the page has no timer left
    await check_page(page, "rollout-live-ended")
