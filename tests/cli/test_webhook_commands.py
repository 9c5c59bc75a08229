"""``registry webhooks``: enable, disable, show, and list by state, against a live registry."""

from __future__ import annotations

import json
import re

from tests.cli.conftest import Registry
from tests.clients.conftest import Live


def webhook(live: Live, url: str) -> int:
    created = live.ok(live.admin.post("/v1/webhooks", json={"url": url, "events": ["*"]}))
    return int(created["webhook"]["id"])


def listed(registry: Registry, *flags: str) -> list[int]:
    ran = registry("webhooks", "list", *flags, "--json")
    assert ran.code == 0, ran.err
    return sorted(int(row["id"]) for row in json.loads(ran.out))


def test_a_webhook_is_disabled_shown_listed_by_state_and_enabled_again(registry: Registry, live: Live) -> None:
    kept, paused = webhook(live, "http://127.0.0.1:9/kept"), webhook(live, "http://127.0.0.1:9/paused")

    disabled = registry("webhooks", "disable", str(paused))
    assert disabled.code == 0, disabled.err
    assert re.match(rf"webhook {paused} http://127.0.0.1:9/paused: disabled since \S", disabled.out), disabled.out
    assert "  reason: disabled by " in disabled.out
    assert live.ok(live.admin.get(f"/v1/webhooks/{paused}"))["enabled"] is False

    assert listed(registry, "--disabled") == [paused]
    assert listed(registry, "--enabled") == [kept]
    assert listed(registry) == sorted([kept, paused])
    table = registry("webhooks", "list", "--disabled").out
    assert table.split("\n")[0].split() == [
        "ID",
        "URL",
        "EVENTS",
        "ENABLED",
        "CONSECUTIVE_FAILURES",
        "DISABLED_REASON",
        "CREATED_AT",
    ]
    assert re.search(rf"^{paused}\s+http://127.0.0.1:9/paused\s+\*\s+False\s+0\s+disabled by ", table, re.M), table

    shown = registry("webhooks", "show", str(paused), "--json")
    assert shown.code == 0, shown.err
    fields = json.loads(shown.out)
    assert (fields["enabled"], fields["consecutive_failures"], fields["failing_since"]) == (False, 0, None)

    enabled = registry("webhooks", "enable", str(paused))
    assert enabled.code == 0, enabled.err
    assert enabled.out.startswith(f"webhook {paused} http://127.0.0.1:9/paused: enabled\n"), enabled.out
    assert listed(registry, "--disabled") == []


def test_enabling_a_webhook_that_does_not_exist_exits_not_found(registry: Registry) -> None:
    assert registry("webhooks", "enable", "999999").code == 3
    assert registry("webhooks", "show", "999999").code == 3
