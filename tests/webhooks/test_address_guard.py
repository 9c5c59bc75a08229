"""Webhooks cannot be pointed at the registry's own network (server-side request forgery).

Refused when a webhook is created, and again at every delivery, where the name
is resolved anew and the connection goes to the address that was checked, so a
name that answers a public address first and 127.0.0.1 later (DNS rebinding)
reaches nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.settings import Settings
from registry.webhooks.addresses import IPNetwork
from registry.webhooks.guard import AddressGuard
from tests.api import Client, Headers
from tests.conftest import count_rows, problem, serve_in_process
from tests.webhooks.conftest import Receiver, replace_dispatcher
from tests.webhooks.test_webhooks_api import runtime_of, subscribe

PUBLIC = "93.184.216.34"


@pytest.fixture
def strict_settings(settings: Settings) -> Settings:
    """The default: no non-public network allowed."""
    return settings.model_copy(update={"webhook_allowed_networks": []})


@dataclass
class ListeningSocket:
    """A TCP listener on 127.0.0.1 that only counts the connections it accepts."""

    port: int = 0
    connections: int = 0


@pytest.fixture
async def loopback_listener() -> AsyncIterator[ListeningSocket]:
    listener = ListeningSocket()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener.connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    listener.port = server.sockets[0].getsockname()[1]
    async with server:
        yield listener


@dataclass
class ScriptedResolver:
    """Answers each lookup with the next address of a script (the last one repeats), and records the lookups."""

    answers: list[str]
    asked: list[str] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        return [self.answers[min(len(self.asked), len(self.answers)) - 1]]


def use_resolver(app: Litestar, resolver: ScriptedResolver, allowed: Sequence[IPNetwork] = ()) -> None:
    """Send the app's host lookups, for creation and delivery alike, to ``resolver``."""
    replace_dispatcher(app, guard=AddressGuard(allowed, resolve=resolver))


async def deliveries(client: Client, admin: Headers, webhook_id: int) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=admin)
    items: list[dict[str, Any]] = response.json()["items"]
    return items


@pytest.mark.parametrize(
    ("url", "address_class"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://localhost:8000/hook", "loopback"),
        ("http://0.0.0.0:8000/hook", "unspecified"),
        ("http://2130706433/hook", "loopback"),
        ("http://0x7f000001/hook", "loopback"),
        ("http://0177.0.0.1/hook", "loopback"),
        ("http://10.0.0.8/hook", "private"),
        ("https://192.168.1.1/hook", "private"),
        ("http://[::1]:8000/hook", "loopback"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fe80::1%25eth0]/hook", "link-local"),
        ("http://[fd00::1]/hook", "private"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback (IPv4 inside IPv6)"),
        ("http://[::ffff:169.254.169.254]/hook", "link-local (IPv4 inside IPv6)"),
    ],
)
async def test_webhooks_to_non_public_addresses_are_refused_when_created(
    strict_settings: Settings, admin: Headers, clean_database: AsyncEngine, url: str, address_class: str
) -> None:
    async with serve_in_process(create_app(strict_settings)) as client:
        response = await client.post("/v1/webhooks", json={"url": url, "events": ["*"]}, headers=admin)
    assert response.status_code == 422, response.text
    (error,) = problem(response)["errors"]
    assert error["field"] == "url"
    assert f" {address_class} address" in error["message"]
    assert await count_rows(clean_database, "webhooks") == 0


async def test_a_name_that_resolves_to_a_private_address_is_refused_when_created(
    strict_settings: Settings, admin: Headers, clean_database: AsyncEngine
) -> None:
    app = create_app(strict_settings)
    resolver = ScriptedResolver(["10.1.2.3"])
    use_resolver(app, resolver)
    async with serve_in_process(app) as client:
        response = await client.post(
            "/v1/webhooks", json={"url": "https://hooks.internal.example/x", "events": ["*"]}, headers=admin
        )
    assert response.status_code == 422
    assert "hooks.internal.example resolves to 10.1.2.3, a private address" in problem(response)["errors"][0]["message"]
    assert resolver.asked == ["hooks.internal.example"]


async def test_listed_networks_are_allowed(
    strict_settings: Settings, admin: Headers, clean_database: AsyncEngine
) -> None:
    allowed = strict_settings.model_copy(update={"webhook_allowed_networks": [ip_network("10.20.0.0/16")]})
    async with serve_in_process(create_app(allowed)) as client:
        await subscribe(client, admin, "http://10.20.30.40:9000/hook", ["*"])
        outside = await client.post("/v1/webhooks", json={"url": "http://10.21.0.1/", "events": ["*"]}, headers=admin)
    assert outside.status_code == 422


def test_allowed_networks_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_WEBHOOK_ALLOWED_NETWORKS", '["10.20.0.0/16", "fd00::/8"]')
    assert Settings().webhook_allowed_networks == [ip_network("10.20.0.0/16"), ip_network("fd00::/8")]


async def test_a_name_rebound_to_loopback_after_creation_is_never_connected(
    strict_settings: Settings, admin: Headers, clean_database: AsyncEngine, loopback_listener: ListeningSocket
) -> None:
    app = create_app(strict_settings)
    resolver = ScriptedResolver([PUBLIC, "127.0.0.1"])  # public when checked at creation, loopback at delivery
    use_resolver(app, resolver)
    async with serve_in_process(app) as client:
        created = await subscribe(client, admin, f"http://rebind.example:{loopback_listener.port}/hook", ["*"])
        webhook_id = created["webhook"]["id"]
        assert (await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)).status_code == 202
        await runtime_of(app).webhooks.run_once()
        await runtime_of(app).webhooks.run_once()  # refused deliveries are not retried
        (delivery,) = await deliveries(client, admin, webhook_id)
    assert resolver.asked == ["rebind.example", "rebind.example"]
    assert loopback_listener.connections == 0
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("dead", 1, None)
    assert delivery["last_error"].startswith("refused: rebind.example resolves to 127.0.0.1, a loopback address")


async def test_an_address_refused_since_creation_is_not_connected_at_delivery(
    settings: Settings,
    strict_settings: Settings,
    admin: Headers,
    clean_database: AsyncEngine,
    loopback_listener: ListeningSocket,
) -> None:
    async with serve_in_process(create_app(settings)) as client:  # created while loopback was allowed
        created = await subscribe(client, admin, f"http://127.0.0.1:{loopback_listener.port}/hook", ["*"])
        webhook_id = created["webhook"]["id"]
        await client.post(f"/v1/webhooks/{webhook_id}/ping", headers=admin)
    app = create_app(strict_settings)
    async with serve_in_process(app) as client:
        await runtime_of(app).webhooks.run_once()
        (delivery,) = await deliveries(client, admin, webhook_id)
    assert loopback_listener.connections == 0
    assert delivery["status"] == "dead"
    assert delivery["last_error"].startswith("refused: 127.0.0.1, a loopback address")


async def test_a_name_is_delivered_to_the_address_it_was_checked_as_with_its_own_host_header(
    settings: Settings, admin: Headers, clean_database: AsyncEngine, receiver: Receiver
) -> None:
    app = create_app(settings)
    resolver = ScriptedResolver(["127.0.0.1"])
    use_resolver(app, resolver, allowed=settings.webhook_allowed_networks)
    port = receiver.url.rsplit(":", 1)[1].split("/")[0]
    async with serve_in_process(app) as client:
        created = await subscribe(client, admin, f"http://hooks.example:{port}/hook", ["*"])
        await client.post(f"/v1/webhooks/{created['webhook']['id']}/ping", headers=admin)
        await runtime_of(app).webhooks.run_once()
        (delivery,) = await deliveries(client, admin, created["webhook"]["id"])
    assert delivery["status"] == "succeeded"
    ((headers, _),) = receiver.received
    assert headers["host"] == f"hooks.example:{port}"
    assert resolver.asked == ["hooks.example", "hooks.example"]
