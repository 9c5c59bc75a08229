"""A live registry on the embedded default (SQLite file, no Redis) and one Chromium for the browser tests.

The server runs under uvicorn in its own thread and event loop on a free port, as a separate server
would; Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright's async API on the tests'
loop, one browser for the whole session and a fresh context (cookies) per test.
Every test fails if a page opened a JavaScript dialog, logged an error or raised one.
Completions run on the fault server (``tests/completions/fault_server.py``), the backend ``fault``,
so usage pages show real recorded usage; webhooks may reach loopback addresses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pytest
import uvicorn

from registry.app import create_app
from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.auth.service import ApiKeyService
from registry.db import migrate
from registry.db.engine import create_engine, create_sessionmaker
from registry.settings import BackendSettings, Settings
from tests.completions.fault_server import FaultServer
from tests.conftest import free_port

CHROMIUM = os.environ.get("REGISTRY_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("REGISTRY_SCREENSHOT_DIR", Path(__file__).parent / "screenshots"))
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
AXE_SOURCE = AXE.read_text()
# WCAG 2.1 A and AA rules and axe's best practices; a serious or critical violation fails the test.
AXE_RUN = (
    "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})"
)
T = TypeVar("T")
_FAILED_LOAD = "Failed to load resource: the server responded with a status of 4"
HOSTILE_KEY_NAME = "<script>alert('key')</script>"


@dataclass
class LiveRegistry:
    url: str
    keys: dict[str, str]  # role -> full API key
    fault_url: str  # the completion backend named "fault"
    fault: FaultServer = field(default_factory=FaultServer, repr=False)  # what that backend was sent

    def http(self) -> httpx.AsyncClient:
        """A client without a key, as a browser that never signed in (or a forger) would send."""
        return httpx.AsyncClient(base_url=self.url, timeout=10)

    def api(self, role: str = "admin") -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {self.keys[role]}"}, timeout=10)


async def _prepare(settings: Settings, roles: dict[str, tuple[Scope, ...]]) -> dict[str, str]:
    engine = create_engine(settings)
    try:
        await migrate.upgrade(engine)
        keys = {}
        async with create_sessionmaker(engine)() as session, session.begin():
            service = ApiKeyService(session)
            for role, scopes in roles.items():
                name = HOSTILE_KEY_NAME if role == "hostile" else role
                _, keys[role] = await service.create_key(name, list(scopes), Actor(name="console-tests"))
        return keys
    finally:
        await engine.dispose()


def _in_own_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh loop in a helper thread (the tests' loop is already running)."""
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(make())))
    thread.start()
    thread.join()
    assert result, "preparing the live registry failed"
    return result[0]


def serve(app: Any, *, lifespan: Literal["on", "off"], name: str) -> tuple[uvicorn.Server, threading.Thread, str]:
    """An ASGI app under uvicorn on a free loopback port, in a thread of its own; returns its base URL too."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), f"{name} failed to start"
        thread.join(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRegistry]:
    directory = tmp_path_factory.mktemp("console")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    backend = FaultServer()
    fault, fault_thread, fault_url = serve(backend, lifespan="off", name="console-fault-backend")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{directory / 'registry.db'}",
        redis_url=None,
        access_log=False,
        log_level="WARNING",
        bootstrap_admin_key=False,
        webhook_dispatch_interval_seconds=3600,
        # Each test signs in afresh; a key verified a moment ago by another context stays valid.
        api_key_cache_seconds=0,
        # Exposures and events reach the results soon, so a test waits few polls for them.
        experiment_exposure_flush_seconds=0.1,
        experiment_statistics_seconds=0.1,
        # Alert rules fire soon after what they watch (only the alerts page's test makes rules, and removes them).
        alert_evaluate_seconds=0.5,
        backends={"fault": BackendSettings(url=fault_url, max_retries=0)},
        webhook_allowed_networks=["127.0.0.0/8"],
    )
    keys = _in_own_loop(
        lambda: _prepare(
            settings,
            {
                "admin": (Scope.ADMIN,),
                "alice": (Scope.READ, Scope.WRITE, Scope.PROMOTE),
                "bob": (Scope.READ, Scope.PROMOTE),
                "reader": (Scope.READ,),
                "writer": (Scope.WRITE,),
                "analyst": (Scope.READ, Scope.ANALYZE),
                "hostile": (Scope.READ, Scope.PROMOTE),
            },
        )
    )
    server, thread, url = serve(create_app(settings), lifespan="on", name="console-live-server")
    try:
        yield LiveRegistry(url=url, keys=keys, fault_url=fault_url, fault=backend)
    finally:
        server.should_exit = True
        thread.join(30)
        fault.should_exit = True
        fault_thread.join(30)


@dataclass
class PageWatch:
    """What pages did that they must not: dialogs (alert, confirm), console errors, uncaught exceptions."""

    events: list[str] = field(default_factory=list)

    def attach(self, context: Any) -> None:
        async def on_dialog(dialog: Any) -> None:
            self.events.append(f"dialog: {dialog.message}")
            await dialog.dismiss()

        def on_console(message: Any) -> None:
            # Pages answered with 4xx on purpose are reported as failed loads; CSP violations are not.
            if message.type in ("error", "warning") and not message.text.startswith(_FAILED_LOAD):
                self.events.append(f"console {message.type}: {message.text}")

        def on_page(page: Any) -> None:
            page.on("dialog", on_dialog)
            page.on("pageerror", lambda error: self.events.append(f"page error: {error}"))
            page.on("console", on_console)

        context.on("page", on_page)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: apt-get install -y chromium (make test does)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        await chromium.close()


class Console:
    """Browser contexts on the live registry, each with its own cookies, watched for script activity."""

    def __init__(self, browser: Any, live: LiveRegistry) -> None:
        self.browser = browser
        self.live = live
        self.watch = PageWatch()
        self.contexts: list[Any] = []

    async def page(self) -> Any:
        context = await self.browser.new_context(base_url=self.live.url, viewport={"width": 1280, "height": 800})
        context.set_default_timeout(5000)
        self.watch.attach(context)
        self.contexts.append(context)
        return await context.new_page()

    async def signed_in(self, role: str) -> Any:
        page = await self.page()
        await sign_in(page, self.live.keys[role])
        return page

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


async def sign_in(page: Any, key: str) -> None:
    await page.goto("/console/login")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/console/prompts**")


async def check_page(page: Any, name: str) -> None:
    """Write a full-page screenshot to look at, and fail on any serious or critical accessibility violation."""
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    # Evaluated through the devtools protocol, which the page's Content-Security-Policy does not govern.
    await page.evaluate(AXE_SOURCE)
    results = await page.evaluate(AXE_RUN)
    serious = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[node['target'] for node in v['nodes']]}"
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert serious == [], f"{name}: {serious}"


@pytest.fixture
async def console(browser: Any, live: LiveRegistry) -> AsyncIterator[Console]:
    session = Console(browser, live)
    yield session
    await session.close()
    assert session.watch.events == [], "a page ran script or reported errors"
