"""deploy/prometheus-alerts.yml: a well-formed Prometheus rules file whose every metric is one the registry
exports (read from the exposition text of a running app), checked by promtool where it is installed; and the
database-only signals (budgets used, rollbacks, firing rules) appear on /metrics after an evaluation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from registry.auth.keys import Scope
from tests.alerts.conftest import FakeClock, complete, create_rule, evaluate, ok
from tests.completions.conftest import publish, unique
from tests.conftest import KeyFactory
from tests.experiments.conftest import Client

RULES_FILE = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.yml"
RULES_TESTS = RULES_FILE.with_name("prometheus-alerts.test.yml")
METRIC = re.compile(r"\bregistry_[a-z0-9_]+\b")
DURATION = re.compile(r"^\d+[smhd]$")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES_FILE.read_text())
    assert set(document) == {"groups"}
    found = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"}, group
        found += group["rules"]
    return found


def exported_names(exposition: str) -> set[str]:
    """Every sample name the exposition's families can carry (families without samples count: labelled ones
    appear once a label is used)."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_every_rule_is_well_formed() -> None:
    found = rules()
    assert len(found) >= 10
    assert len({rule["alert"] for rule in found}) == len(found)
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Registry[A-Z][A-Za-z0-9]+", rule["alert"]), rule["alert"]
        assert METRIC.search(rule["expr"]), rule
        assert rule["labels"]["severity"] in ("page", "warn"), rule
        assert rule["annotations"]["summary"], rule
        assert rule["annotations"]["description"], rule
        assert DURATION.match(rule.get("for", "0s")), rule


def test_the_rules_cover_the_registry_signals() -> None:
    used = {name for rule in rules() for name in METRIC.findall(rule["expr"])}
    assert {
        "registry_completions_total",
        "registry_upstream_errors_total",
        "registry_upstream_latency_seconds_bucket",
        "registry_upstream_ttft_seconds_bucket",
        "registry_completion_cost_total",
        "registry_backend_breaker_state",
        "registry_api_key_budget_used_ratio",
        "registry_rollouts_rolled_back",
        "registry_alerts_firing",
    } <= used


async def test_every_metric_the_rules_use_is_exported(client: Client) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    exported = exported_names(response.text)
    used = {name for rule in rules() for name in METRIC.findall(rule["expr"])}
    assert used - exported == set()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
@pytest.mark.parametrize(
    "command", [("check", "rules", RULES_FILE), ("test", "rules", RULES_TESTS)], ids=["check", "test"]
)
def test_promtool_accepts_the_rules_and_their_unit_tests_pass(command: tuple[str, str, Path]) -> None:
    """The unit tests feed series (10% errors, a key at 85% then 100%, an open breaker, a rollback) and expect
    each alert, with its labels and rendered annotations, at the minute it should fire and not before."""
    checked = subprocess.run(["promtool", *map(str, command)], capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_database_signals_are_on_metrics_after_an_evaluation(
    client: Client, admin: dict[str, str], make_key: KeyFactory
) -> None:
    await publish(client, admin, backend="steady", model=unique("status:500:all"))
    app_key = await make_key(Scope.READ, name="app")
    key_id = (await ok(await client.get("/v1/keys/", headers=admin)))["items"][-1]["id"]
    await ok(await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_cost": 10.0}, headers=admin))
    await create_rule(client, admin, "errors", "error_rate", threshold=0.5, min_count=1)
    await complete(client, app_key, 1)
    clock = FakeClock()
    clock.advance(1)
    await evaluate(client, clock)
    families = {f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)}
    budget = [(s.labels, s.value) for s in families["registry_api_key_budget_used_ratio"].samples]
    assert budget == [({"key": key_id}, 0.0)]
    assert [s.value for s in families["registry_rollouts_rolled_back"].samples] == [0.0]
    firing = [(s.labels, s.value) for s in families["registry_alerts_firing"].samples]
    assert firing == [({"rule": "errors", "kind": "error_rate"}, 1.0)]
