"""Which addresses a webhook may reach: public ones, plus the networks an operator lists.

A webhook URL is chosen by an API caller and the registry POSTs to it from
inside its own network, so an unchecked URL reaches cloud metadata
(169.254.169.254), the registry's database or any internal service
(server-side request forgery). These rules are pure; resolving names and
pinning the connection to the checked address live in ``registry.webhooks.guard``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Hosts the C resolver reads as an IPv4 address: 2130706433, 0x7f000001, 0177.0.0.1, 127.1.
_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` spells, in any form the system resolver accepts, or None for a name."""
    if ":" in host:
        address, _, _zone = host.partition("%")
        return ipaddress.IPv6Address(address)  # ValueError: neither a name nor an address
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (``::ffff:127.0.0.1``, 6to4), reached as that address."""
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped or address.sixtofour
    return None


def address_class(address: IPAddress) -> str | None:
    """The class that keeps ``address`` from webhooks (``loopback``, ``private``...), None when public."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner = address_class(embedded)
        return None if inner is None else f"{inner} (IPv4 inside IPv6)"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("non-public", not address.is_global),
    )
    return next((name for name, applies in checks if applies), None)


def is_allowed(address: IPAddress, allowed_networks: Sequence[IPNetwork]) -> bool:
    """Whether ``address`` is public or inside a network the operator allows."""
    embedded = _embedded_ipv4(address)
    candidates = [address] if embedded is None else [address, embedded]
    if any(candidate in network for candidate in candidates for network in allowed_networks):
        return True
    return address_class(address) is None


def refusal(host: str, address: IPAddress, allowed_networks: Sequence[IPNetwork]) -> str | None:
    """Why a webhook may not connect to ``address`` (what ``host`` resolved to), or None when it may."""
    if is_allowed(address, allowed_networks):
        return None
    where = str(address) if host == str(address) else f"{host} resolves to {address}"
    kind = address_class(address) or "refused"
    article = "an" if kind[0] in "aeiou" else "a"
    return (
        f"{where}, {article} {kind} address; webhooks reach public addresses only, "
        "and the private networks listed in REGISTRY_WEBHOOK_ALLOWED_NETWORKS"
    )
