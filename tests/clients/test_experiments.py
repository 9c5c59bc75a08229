"""Local assignment: the client routes units as the service does, and reports what it showed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prompt_registry_client import BatchPolicy, CachePolicy, RegistryClient

from tests.clients.conftest import Live, LiveFactory, Recorder, RecordingTransport, text
from tests.waiting import eventually

CASES = json.loads((Path(__file__).parents[1] / "experiments" / "cases" / "growthbook.json").read_text())["assign"]
# Every case the service can express: it needs a unit id and at least two variants.
EXPRESSIBLE = [case for case in CASES if case[1] and case[2]["variations"] >= 2]


def experiment_for(key: str, prompt: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The service's experiment for a GrowthBook case (variant j runs prompt version j + 1)."""
    count = spec["variations"]
    weights = spec.get("weights") or [1.0] * count
    body: dict[str, Any] = {
        "key": key,
        "prompt": prompt,
        "variants": [{"key": f"v{j}", "prompt_version": j + 1, "weight": weights[j]} for j in range(count)],
        "hash_seed": spec.get("seed") or spec["key"],
        "hash_version": spec["hashVersion"],
        "coverage": spec.get("coverage", 1.0),
        "forced_variants": {unit: f"v{j}" for unit, j in spec.get("forced", {}).items()},
        "primary_metric": "converted",
    }
    if spec.get("namespace"):
        name, start, end = spec["namespace"]
        body["namespace"] = {"name": name, "start": start, "end": end}
    return body


def start_experiment(live: Live, body: dict[str, Any]) -> None:
    if live.admin.get("/v1/metrics/converted").status_code == 404:
        live.ok(live.admin.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}))
    live.ok(live.admin.post("/v1/experiments", json=body))
    live.ok(live.admin.post(f"/v1/experiments/{body['key']}/start"))


def test_local_assignment_matches_the_service_for_every_case_of_its_case_file(live: Live) -> None:
    assert len(EXPRESSIBLE) >= 40
    prompts: dict[str, str] = {}
    for case in EXPRESSIBLE:
        spec = json.dumps(case[2], sort_keys=True)
        if spec not in prompts:
            prompts[spec] = prompt = f"case-{len(prompts)}"
            live.prompt(prompt, *[text(f"v{j + 1}") for j in range(case[2]["variations"])])
            start_experiment(live, experiment_for(f"exp-{prompt}", prompt, case[2]))
    mismatches = []
    with RegistryClient(live.url, live.key, cache=CachePolicy(watch_changes=False)) as registry:
        for description, unit, spec, variation, in_experiment, _ in EXPRESSIBLE:
            prompt = prompts[json.dumps(spec, sort_keys=True)]
            served = live.ok(live.admin.post(f"/v1/prompts/{prompt}/render", json={"unit": unit}))
            local = registry.render(prompt, unit=unit)
            experiment = registry.get_experiment(f"exp-{prompt}")
            assert local.experiment is not None
            seen = {
                "service": (served["experiment"]["variant"], served["experiment"]["in_experiment"], served["text"]),
                "client": (local.experiment.variant, local.experiment.in_experiment, local.text),
                "definition": (experiment.assign(unit).variant, experiment.assign(unit).in_experiment, local.text),  # type: ignore[union-attr]
                "case file": (f"v{variation}" if variation >= 0 else None, in_experiment, served["text"]),
            }
            if len(set(seen.values())) != 1:
                mismatches.append((description, seen))
    assert mismatches == []


def recorded_exposures(live: Live, unit: str) -> list[dict[str, Any]]:
    """The unit's exposures written so far (none while the service still buffers them)."""
    response = live.admin.get(f"/v1/units/{unit}")
    return [] if response.status_code == 404 else list(live.ok(response)["exposures"])


def test_a_locally_assigned_render_reports_its_exposure_in_a_batch(live_registry: LiveFactory) -> None:
    live = live_registry(experiment_exposure_flush_seconds=0.05)
    live.prompt("greet", text("v1 {{ name }}"), text("v2 {{ name }}"))
    start_experiment(live, experiment_for("tone", "greet", {"key": "tone", "variations": 2, "hashVersion": 2}))
    recorder = Recorder()
    units = [f"user-{i}" for i in range(30)]
    batches = BatchPolicy(flush_interval=30)  # one batch, on close
    with RegistryClient(live.url, live.key, transport=RecordingTransport(recorder), batches=batches) as registry:
        shown = {unit: registry.render("greet", {"name": "Ada"}, unit=unit) for unit in units}
        registry.render("greet", {"name": "Ada"}, unit="user-0")  # seen again: one exposure is enough
    assert {r.experiment.variant for r in shown.values() if r.experiment} == {"v0", "v1"}
    assert all(
        r.text == ("v1 Ada" if r.experiment and r.experiment.variant == "v0" else "v2 Ada") for r in shown.values()
    )
    assert recorder.count("POST /v1/prompts/greet/render") == 0, "assigned and rendered locally"
    assert recorder.statuses["POST /v1/exposures 202"] == 1, "recorded in one batch"
    for unit, rendered in shown.items():
        eventually(lambda unit=unit: bool(recorded_exposures(live, unit)), f"an exposure recorded for {unit}")
        exposures = recorded_exposures(live, unit)
        assert rendered.experiment is not None
        assert [(e["experiment"], e["variant"]) for e in exposures] == [("tone", rendered.experiment.variant)]


def test_units_outside_a_running_experiment_get_production_and_no_exposure(live: Live) -> None:
    live.prompt("greet", text("v1"), text("v2"))
    body = experiment_for("tone", "greet", {"key": "tone", "variations": 2, "hashVersion": 2, "coverage": 0.0})
    start_experiment(live, body)
    with RegistryClient(live.url, live.key, cache=CachePolicy(watch_changes=False)) as registry:
        rendered = registry.render("greet", unit="user-1")
        assert registry.pending_events == 0
    assert rendered.text == "v1"
    assert rendered.experiment is not None
    assert (rendered.experiment.variant, rendered.experiment.in_experiment) == (None, False)
