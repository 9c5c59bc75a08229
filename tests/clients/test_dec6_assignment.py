"""A draft experiment's QA units: the client renders for them what the service renders."""

from __future__ import annotations

from prompt_registry_client import CachePolicy, RegistryClient

from tests.clients.conftest import Live, text
from tests.clients.test_experiments import experiment_for


def test_a_drafts_forced_unit_gets_production_locally_as_from_the_service(live: Live) -> None:
    live.prompt("dec6-draft", text("v1"), text("v2"))
    spec = {"key": "dec6-draft", "variations": 2, "hashVersion": 2, "forced": {"qa-1": 1}}
    live.ok(live.admin.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}))
    live.ok(live.admin.post("/v1/experiments", json=experiment_for("dec6-draft", "dec6-draft", spec)))
    served = live.ok(live.admin.post("/v1/prompts/dec6-draft/render", json={"unit": "qa-1"}))
    with RegistryClient(live.url, live.key, cache=CachePolicy(watch_changes=False)) as registry:
        local = registry.render("dec6-draft", unit="qa-1")
        assigned = registry.get_experiment("dec6-draft").assign("qa-1")
    assert (served["text"], served["experiment"]) == ("v1", None)
    assert (local.text, local.version, local.experiment) == ("v1", 1, None)
    assert assigned is None, "a draft routes no one, as assign's docstring says"
