"""Keeps webhook deliveries on permitted addresses, also when a name changes its answer (DNS rebinding).

A URL is checked when the webhook is created, but a name can resolve to a
public address then and to 127.0.0.1 later. So every delivery resolves the
name again inside the connection itself: the connector's resolver checks
every address the name has and hands exactly those to the connector, which
connects to one of them. No second lookup happens between the check and the
connection, and the Host header and TLS server name stay the URL's own host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from registry.webhooks.addresses import IPAddress, IPNetwork, literal_address, refusal

HostResolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolves a host name to address strings: the system resolver, or a stand-in in tests."""

_NUMERIC_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressRefusedError(Exception):
    """A webhook's host is, or resolves to, an address webhooks may not reach."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AddressGuard:
    """Resolves webhook hosts and refuses any that stands for a non-public address outside the allowed networks."""

    def __init__(
        self,
        allowed_networks: Sequence[IPNetwork],
        *,
        resolve: HostResolver = system_resolver,
        resolve_timeout: float = 5.0,
    ) -> None:
        self.allowed_networks = tuple(allowed_networks)
        self._resolve = resolve
        self._resolve_timeout = resolve_timeout

    def check_literal(self, host: str) -> IPAddress | None:
        """The address ``host`` spells, once checked; None for a name (resolve it with ``addresses``)."""
        try:
            address = literal_address(host)
        except ValueError as exc:
            raise AddressRefusedError(f"{host} is neither a host name nor an IP address") from exc
        if address is not None:
            self._check(host, address)
        return address

    async def addresses(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` stands for now, each checked: one refused address refuses the host."""
        literal = self.check_literal(host)
        if literal is not None:
            return [literal]
        async with asyncio.timeout(self._resolve_timeout):
            answers = await self._resolve(host, port)
        found = [ipaddress.ip_address(answer.partition("%")[0]) for answer in answers]
        for address in found:
            self._check(host, address)
        return found

    async def url_refusal(self, url: str) -> str | None:
        """Why a webhook may not have ``url``; a name that does not resolve yet passes (deliveries check again)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            await self.addresses(host, parts.port or (443 if parts.scheme == "https" else 80))
        except AddressRefusedError as exc:
            return exc.reason
        except UnicodeError:  # a label empty or over 63 characters: the resolver cannot even ask for it
            return f"{host} is not a valid host name"
        except (OSError, TimeoutError):
            return None
        return None

    def _check(self, host: str, address: IPAddress) -> None:
        reason = refusal(host, address, self.allowed_networks)
        if reason is not None:
            raise AddressRefusedError(reason)


class GuardedResolver(AbstractResolver):
    """The connector's resolver: answers only checked addresses, so the connection goes to one of them."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=_NUMERIC_FLAGS,
            )
            for address in await self._guard.addresses(host, port)
        ]

    async def close(self) -> None:
        return None


class WebhookHttp:
    """The HTTP session webhooks go out through.

    Separate from the completion backends' session, which may rightly reach
    private networks. Connections are not kept alive and names are not cached,
    so every delivery resolves and checks its host again.
    """

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self.guard), use_dns_cache=False, force_close=True, limit=64
            )
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
