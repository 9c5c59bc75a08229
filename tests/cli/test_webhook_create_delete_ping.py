"""``registry webhooks create``, ``ping`` and ``delete``, against a live registry."""

from __future__ import annotations

import json
import re

from tests.cli.conftest import Registry
from tests.clients.conftest import Live


def test_create_prints_the_secret_once_then_ping_queues_a_test_and_delete_removes_it(
    registry: Registry, live: Live
) -> None:
    created = registry(
        "webhooks", "create", "http://127.0.0.1:9/hooks", "--event", "prompt.*", "--event", "alert.firing"
    )
    assert created.code == 0, created.err
    match = re.match(r"webhook (\d+) http://127.0.0.1:9/hooks: created\n", created.out)
    assert match, created.out
    webhook_id = int(match[1])
    assert "  events: alert.firing, prompt.*\n" in created.out
    secret = re.search(r"^  secret: (whsec_\S+)$", created.out, re.M)
    assert secret, created.out
    assert "shown only now" in created.out
    shown = registry("webhooks", "show", str(webhook_id), "--json")
    assert shown.code == 0, shown.err
    assert secret[1] not in shown.out
    assert "secret" not in json.loads(shown.out)

    pinged = registry("webhooks", "ping", str(webhook_id))
    assert (pinged.code, pinged.err) == (0, "")
    assert pinged.out == f"webhook {webhook_id}: ping queued (see 'registry webhooks deliveries {webhook_id}')\n"
    deliveries = json.loads(registry("webhooks", "deliveries", str(webhook_id), "--json").out)
    assert [d["event_type"] for d in deliveries] == ["ping"]

    deleted = registry("webhooks", "delete", str(webhook_id))
    assert (deleted.code, deleted.out, deleted.err) == (0, f"webhook {webhook_id}: deleted\n", "")
    assert live.admin.get(f"/v1/webhooks/{webhook_id}").status_code == 404


def test_create_with_json_prints_the_api_answer_secret_included(registry: Registry) -> None:
    created = registry("webhooks", "create", "http://127.0.0.1:9/json", "--event", "*", "--json")
    assert created.code == 0, created.err
    answer = json.loads(created.out)
    assert answer["secret"].startswith("whsec_")
    assert (answer["webhook"]["url"], answer["webhook"]["events"]) == ("http://127.0.0.1:9/json", ["*"])

    pinged = registry("webhooks", "ping", str(answer["webhook"]["id"]), "--json")
    assert json.loads(pinged.out) == {"webhook": answer["webhook"]["id"], "queued": "ping"}
    deleted = registry("webhooks", "delete", str(answer["webhook"]["id"]), "--json")
    assert json.loads(deleted.out) == {"webhook": answer["webhook"]["id"], "deleted": True}


def test_a_bad_url_exits_with_validation_naming_the_field_and_creates_nothing(registry: Registry, live: Live) -> None:
    ran = registry("webhooks", "create", "ftp://example.com/hooks", "--event", "*")
    assert (ran.code, ran.out) == (6, "")
    lines = ran.err.splitlines()
    assert lines[0] == "error: the webhook is invalid", ran.err
    assert lines[1] == "  url: must be an absolute http:// or https:// URL", ran.err
    assert live.ok(live.admin.get("/v1/webhooks"))["items"] == []


def test_create_without_an_event_is_a_usage_error(registry: Registry) -> None:
    ran = registry("webhooks", "create", "http://127.0.0.1:9/hooks")
    assert ran.code == 2
    assert "--event" in ran.err


def test_deleting_or_pinging_a_webhook_that_does_not_exist_exits_not_found_in_one_line(registry: Registry) -> None:
    for command in ("delete", "ping"):
        ran = registry("webhooks", command, "999999")
        assert (ran.code, ran.out) == (3, ""), command
        assert ran.err == "error: no webhook has id 999999\n", command


def test_pinging_a_disabled_webhook_exits_conflict_and_queues_nothing(registry: Registry, live: Live) -> None:
    created = json.loads(registry("webhooks", "create", "http://127.0.0.1:9/paused", "--event", "*", "--json").out)
    webhook_id = created["webhook"]["id"]
    assert registry("webhooks", "disable", str(webhook_id)).code == 0
    ran = registry("webhooks", "ping", str(webhook_id))
    assert (ran.code, ran.out) == (4, "")
    assert ran.err.startswith(f"error: webhook {webhook_id} is disabled (disabled by "), ran.err
    assert len(ran.err.splitlines()) == 1
    assert live.ok(live.admin.get(f"/v1/webhooks/{webhook_id}/deliveries"))["items"] == []
