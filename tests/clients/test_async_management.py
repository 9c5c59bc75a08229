"""The async client's management calls (gates, datasets, evaluations, webhooks, versions) against a live registry."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prompt_registry_client import AsyncRegistryClient, CachePolicy, NotFound

from tests.cli.conftest import evals_live, stand_in_prompt
from tests.cli.test_eval_commands import ALWAYS_N
from tests.clients.conftest import Live, text
from tests.evals.conftest import stand_in

__all__ = ["evals_live", "stand_in"]  # fixtures
NO_FEED = CachePolicy(watch_changes=False)
EXACT: dict[str, Any] = {"kind": "exact_match"}


def jsonl(*answers: str) -> bytes:
    return b"".join(json.dumps({"variables": {"answer": a}, "expected": "y"}).encode() + b"\n" for a in answers)


async def test_the_async_client_sets_a_gate_with_its_scoring_reads_and_deletes_it(live: Live) -> None:
    live.prompt("gated", text("{{ answer }}"))
    async with AsyncRegistryClient(live.url, live.key, cache=NO_FEED) as registry:
        version, created = await registry.push_dataset("gated-cases", jsonl("y", "n"))
        assert (version["version"], created) == (1, True)
        assert (await registry.push_dataset("gated-cases", jsonl("y", "n")))[1] is False, "the same items again"
        async with registry.export_dataset("gated-cases") as chunks:
            exported = b"".join([chunk async for chunk in chunks])
        assert [json.loads(line)["variables"] for line in exported.splitlines()] == [{"answer": "y"}, {"answer": "n"}]

        gate = await registry.set_gate(
            "gated", "production", dataset="gated-cases", min_pass_rate=0.9, scorers=[EXACT], pass_rule={"all": True}
        )
        assert gate["min_pass_rate"] == 0.9
        shown = await registry.get_gate("gated", "production")
        assert [spec["kind"] for spec in shown["scorers"]] == ["exact_match"]
        assert shown["pass_rule"] == gate["pass_rule"] is not None
        await registry.delete_gate("gated", "production")
        with pytest.raises(NotFound):
            await registry.get_gate("gated", "production")


async def test_the_async_client_runs_an_evaluation_and_follows_its_events(evals_live: Live) -> None:
    version = stand_in_prompt(evals_live, "evaluated", ALWAYS_N)
    async with AsyncRegistryClient(evals_live.url, evals_live.key, cache=NO_FEED) as registry:
        await registry.push_dataset("evaluated-cases", jsonl("y", "y", "y"))
        run = await registry.start_eval_run("evaluated", version, "evaluated-cases", [EXACT])
        events = [event async for event in registry.eval_run_events(run["id"])]
        assert events[-1][0] == "done"
        assert events[-1][1]["status"] == "completed"
        finished = await registry.get_eval_run(run["id"])
        assert (finished["status"], finished["items_done"]) == ("completed", 3)
        failed = [item async for item in registry.eval_run_items(run["id"], failed=True)]
        assert len(failed) == 3, "the prompt answers n to every item, each expecting y"
        assert [r["id"] async for r in registry.list_eval_runs(prompt="evaluated")] == [run["id"]]


async def test_the_async_client_disables_enables_and_lists_webhooks_by_state(live: Live) -> None:
    hooks = [
        live.ok(live.admin.post("/v1/webhooks", json={"url": f"http://127.0.0.1:9/{n}", "events": ["*"]})) for n in "ab"
    ]
    kept, paused = (int(hook["webhook"]["id"]) for hook in hooks)
    async with AsyncRegistryClient(live.url, live.key, cache=NO_FEED) as registry:
        disabled = await registry.disable_webhook(paused)
        assert (disabled["enabled"], disabled["disabled_reason"][:12]) == (False, "disabled by ")
        assert [w["id"] async for w in registry.list_webhooks(enabled=False)] == [paused]
        assert [w["id"] async for w in registry.list_webhooks(enabled=True)] == [kept]
        assert (await registry.enable_webhook(paused))["enabled"] is True
        assert (await registry.get_webhook(paused))["disabled_at"] is None


async def test_the_async_client_promotes_reading_the_holder_and_lists_versions_and_history(live: Live) -> None:
    live.prompt("moved", text("one"), text("two"))
    async with AsyncRegistryClient(live.url, live.key, cache=NO_FEED) as registry:
        await registry.promote("moved", 2, "production", reason="better")
        assert await registry.current_version("moved", "production") == 2
        assert (await registry.resolve("moved"))["version"]["version"] == 2
        assert sorted([v["version"] async for v in registry.list_versions("moved")]) == [1, 2]
        assert "better" in [entry.get("reason") async for entry in registry.history("moved")]
