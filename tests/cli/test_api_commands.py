"""What a product person or analyst does with ``registry``: each command against a live registry."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.cli.conftest import Registry
from tests.clients.conftest import Live, LiveFactory
from tests.completions.conftest import backend
from tests.completions.fault_server import FaultServer


def test_a_prompt_is_created_given_versions_from_files_shown_and_rendered(registry: Registry, tmp_path: Path) -> None:
    assert registry("prompts", "create", "support/summarize", "--tags", "support,email").code == 0
    text = tmp_path / "summarize.txt"
    text.write_text("Summarize: {{ text }}")
    created = registry("versions", "create", "support/summarize", "--file", str(text), "--message", "first")
    assert (created.code, created.out) == (0, "support/summarize v1 (draft)\n")
    chat = tmp_path / "summarize.yaml"
    chat.write_text("messages:\n  - {role: system, content: 'Be brief.'}\n  - {role: user, content: '{{ text }}'}\n")
    assert registry("versions", "create", "support/summarize", "--file", str(chat)).out.startswith(
        "support/summarize v2 (draft)"
    )
    assert registry("promote", "support/summarize", "1", "--to", "production").code == 0

    shown = registry("prompts", "show", "support/summarize")
    assert shown.code == 0
    assert "support/summarize v1 (production)" in shown.out
    assert "tags: email,support" in shown.out
    assert "Summarize: {{ text }}\n" in shown.out
    latest = registry("prompts", "show", "support/summarize", "--label", "latest")
    assert "[system]\nBe brief.\n[user]\n{{ text }}\n" in latest.out
    assert registry("versions", "show", "support/summarize", "2").out.startswith("support/summarize v2 (draft)")

    rendered = registry("render", "support/summarize", "--var", "text=A long ticket")
    assert (rendered.code, rendered.out) == (0, "Summarize: A long ticket\n")
    assert "support/summarize v1 (production)" in rendered.err
    as_json = json.loads(registry("render", "support/summarize", "--vars", '{"text": "x"}', "--json").out)
    assert (as_json["text"], as_json["version"]) == ("Summarize: x", 1)


def test_tags_print_as_text_and_diff_lines_all_end(registry: Registry, live: Live) -> None:
    live.prompt(
        "greet", {"kind": "text", "template": "Hello"}, {"kind": "text", "template": "Hello there"}, tags=["a", "b"]
    )
    listed = registry("prompts", "list")
    assert re.search(r"^greet\s+2\s+a,b\s", listed.out, re.M), listed.out
    assert "[" not in listed.out

    diff = registry("diff", "greet", "1", "2")
    assert diff.code == 0
    lines = diff.out.split("\n")
    assert "-Hello" in lines
    assert "+Hello there" in lines
    assert "\\ No newline at end of file" in lines
    assert diff.out.endswith("\n")


def test_a_config_is_created_versioned_from_a_file_shown_and_promoted(registry: Registry, tmp_path: Path) -> None:
    assert registry("configs", "create", "small", "--description", "the small model").code == 0
    body = tmp_path / "small.json"
    body.write_text(json.dumps({"backend": "local", "model": "tiny", "params": {"temperature": 0.2}}))
    assert registry("versions", "create", "small", "--config", "--file", str(body)).out == "small v1 (draft)\n"
    assert registry("promote", "small", "1", "--to", "production", "--config").code == 0
    shown = registry("configs", "show", "small")
    assert "small v1 (production)" in shown.out
    assert "backend: local, model: tiny" in shown.out
    assert re.search(r"^small\s+1\s", registry("configs", "list").out, re.M)

    template = tmp_path / "greet.txt"
    template.write_text("Hello {{ name }}")
    registry("prompts", "create", "greet")
    linked = registry("versions", "create", "greet", "--file", str(template), "--link-config", "small:production")
    assert linked.code == 0, linked.err
    assert "config: small v1" in registry("versions", "show", "greet", "1").out


def test_metrics_are_created_and_listed_and_events_sent_from_csv_and_jsonl(registry: Registry, tmp_path: Path) -> None:
    created = registry("metrics", "create", "converted", "--kind", "binomial", "--description", "bought")
    assert (created.code, created.out) == (0, "created metric converted (binomial, any)\n")
    assert registry("metrics", "create", "revenue", "--kind", "continuous").code == 0
    listed = registry("metrics", "list")
    assert re.search(r"^converted\s+binomial\s+any\s+higher\s+bought$", listed.out, re.M), listed.out

    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["unit", "metric", "value", "timestamp"])
    writer.writerow(["u1", "converted", "1", an_hour_ago])
    writer.writerow(["u2", "revenue", "12.5", an_hour_ago])
    events_csv = tmp_path / "events.csv"
    events_csv.write_text(rows.getvalue())
    sent = registry("events", "send", str(events_csv))
    assert (sent.code, sent.out) == (0, "2 accepted, 0 duplicate, 0 rejected\n"), sent.err
    again = registry("events", "send", str(events_csv))
    assert (again.code, again.out) == (0, "0 accepted, 2 duplicate, 0 rejected\n"), "the same file twice counts once"

    lines = [
        {"unit": "u3", "metric": "converted", "timestamp": an_hour_ago},
        {"unit": "u4", "metric": "converted"},
    ]
    events_jsonl = tmp_path / "events.jsonl"
    events_jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    partly = registry("events", "send", str(events_jsonl))
    assert partly.code == 6, "a rejected event is a validation failure"
    assert partly.out == "1 accepted, 0 duplicate, 1 rejected\n"
    assert partly.err.startswith("line 2: timestamp: Object missing required field `timestamp`\n"), partly.err
    assert "timestamp, ISO 8601 with a time zone" in partly.err


def test_audit_usage_and_webhooks_have_commands(registry: Registry, live: Live) -> None:
    live.prompt("greet", {"kind": "text", "template": "Hello"})
    audit = registry("audit", "--resource-name", "greet")
    assert audit.code == 0
    assert re.search(r"prompt\.create\s+prompt\s+greet", audit.out), audit.out
    usage = registry("usage", "--group-by", "prompt")
    assert usage.code == 0
    assert usage.out.split("\n")[0].split() == [
        "PROMPT",
        "REQUESTS",
        "ERRORS",
        "INPUT_TOKENS",
        "OUTPUT_TOKENS",
        "COST",
        "MEAN_LATENCY_MS",
    ]

    hook = live.ok(live.admin.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]}))
    webhook_id = hook["webhook"]["id"]
    assert live.admin.post(f"/v1/webhooks/{webhook_id}/ping").status_code == 202
    assert re.search(rf"^{webhook_id}\s+http://127.0.0.1:9/hook\s+\*", registry("webhooks", "list").out, re.M)
    deliveries = registry("webhooks", "deliveries", str(webhook_id), "--json")
    assert deliveries.code == 0
    (delivery,) = json.loads(deliveries.out)
    again = registry("webhooks", "redeliver", str(webhook_id), str(delivery["id"]))
    assert again.code == 0, again.err
    assert again.out.startswith(f"delivery {delivery['id']} ({delivery['event_type']}):")
    assert registry("webhooks", "redeliver", str(webhook_id), "999999").code == 3


def test_an_experiment_is_shown_updated_and_exported(registry: Registry, live: Live, tmp_path: Path) -> None:
    live.prompt("greet", {"kind": "text", "template": "Hello"}, {"kind": "text", "template": "Hi"})
    registry("metrics", "create", "converted", "--kind", "binomial")
    created = registry(
        "experiments", "create", "greet-test", "--prompt", "greet", "--variant", "control=1", "--variant", "treatment=2"
    )
    assert created.code == 0, created.err
    updated = registry(
        "experiments", "update", "greet-test", "--weight", "control=3", "--weight", "treatment=1",
        "--primary-metric", "converted", "--description", "shorter greeting",
    )  # fmt: skip
    assert updated.code == 0, updated.err
    assert re.search(r"^control\s+1\s+0\.750", updated.out, re.M), updated.out
    shown = registry("experiments", "show", "greet-test")
    assert "primary metric: converted" in shown.out
    assert registry("experiments", "update", "greet-test").code == 2, "nothing to change is a usage error"

    assert registry("experiments", "start", "greet-test").code == 0
    live.ok(live.admin.post("/v1/prompts/greet/render", json={"variables": {}, "unit": "u1"}))
    output = tmp_path / "units.csv"
    exported = registry("experiments", "export", "greet-test", "--output", str(output))
    assert exported.code == 0, exported.err
    assert output.read_text().splitlines()[0].startswith("unit")
    assert not list(tmp_path.glob(".*partial"))
    assert registry("experiments", "export", "no-such-test", "--output", str(tmp_path / "x.csv")).code == 3
    assert not (tmp_path / "x.csv").exists()


def test_complete_streams_the_answer_to_stdout_and_what_ran_to_stderr(
    live_registry: LiveFactory, fault: FaultServer
) -> None:
    live = live_registry(backends={"fault": backend(fault.url)})  # type: ignore[attr-defined]
    live.ok(live.admin.post("/v1/configs", json={"name": "standin"}))
    body = {"backend": "fault", "model": f"ok/{uuid.uuid4().hex[:8]}", "params": {"max_tokens": 8}}
    live.ok(live.admin.post("/v1/configs/standin/versions", json=body))
    chat = {"kind": "chat", "messages": [{"role": "user", "content": "Say hello to {{ name }}."}]}
    live.prompt("greet", {**chat, "config": {"name": "standin", "version": 1}})
    registry = Registry(live)

    streamed = registry("complete", "greet", "--var", "name=Ada")
    assert streamed.code == 0, streamed.err
    assert streamed.out == "Hello from the\n"
    ran, used = streamed.err.splitlines()
    assert ran == "(greet v1, config standin v1)"
    assert ", 3 out, cost " in used
    whole = registry("complete", "greet", "--var", "name=Ada", "--no-stream")
    assert (whole.code, whole.out) == (0, "Hello from the\n")
