"""The pure rules of which addresses webhooks may reach, from tests/cases/webhook_addresses.json."""

from __future__ import annotations

import json
from ipaddress import ip_network
from pathlib import Path

import pytest

from registry.webhooks.addresses import IPNetwork, address_class, literal_address, refusal

CASES = json.loads((Path(__file__).parents[1] / "cases" / "webhook_addresses.json").read_text())


@pytest.mark.parametrize(
    ("host", "allowed", "refused_class"), [c[1:] for c in CASES["hosts"]], ids=[c[0] for c in CASES["hosts"]]
)
def test_hosts_that_spell_an_address(host: str, allowed: list[str], refused_class: str | None) -> None:
    address = literal_address(host)
    assert address is not None
    networks: list[IPNetwork] = [ip_network(n) for n in allowed]
    reason = refusal(host, address, networks)
    if refused_class is None:
        assert reason is None
    else:
        assert address_class(address) == refused_class
        assert reason is not None
        assert f" {refused_class} address" in reason
        assert "REGISTRY_WEBHOOK_ALLOWED_NETWORKS" in reason


@pytest.mark.parametrize("host", [c[1] for c in CASES["names"]], ids=[c[0] for c in CASES["names"]])
def test_names_are_left_to_the_resolver(host: str) -> None:
    assert literal_address(host) is None
