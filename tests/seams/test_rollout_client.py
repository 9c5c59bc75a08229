"""The Python client on a prompt in rollout: it assigns each unit the side the service routes it to, renders
that version locally, and its reported exposures are taken."""

from __future__ import annotations

from prompt_registry_client import BatchPolicy, RegistryClient

from tests.clients.conftest import LiveFactory, Recorder, RecordingTransport, live_registry, text  # noqa: F401
from tests.clients.test_experiments import recorded_exposures
from tests.waiting import eventually


def test_local_renders_of_a_prompt_in_rollout_match_the_service_and_report_their_exposures(
    live_registry: LiveFactory,  # noqa: F811
) -> None:
    live = live_registry(experiment_exposure_flush_seconds=0.05, rollout_check_seconds=3600.0)
    live.prompt("greet", text("v1 {{ name }}"), text("v2 {{ name }}"))
    live.ok(live.admin.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}))
    body = {"candidate_version": 2, "steps": [{"share": 0.3}, {"share": 1.0}], "guardrails": [{"metric": "converted"}]}
    rollout = live.ok(live.admin.post("/v1/prompts/greet/rollouts", json=body))
    units = [f"user-{i}" for i in range(40)]
    served = {}
    for unit in units:
        preview = {"unit": unit, "variables": {"name": "Ada"}}
        served[unit] = live.ok(live.admin.post(f"/v1/experiments/{rollout['experiment']}/preview", json=preview))
    recorder = Recorder()
    with RegistryClient(
        live.url, live.key, transport=RecordingTransport(recorder), batches=BatchPolicy(flush_interval=30)
    ) as registry:
        shown = {unit: registry.render("greet", {"name": "Ada"}, unit=unit) for unit in units}
    for unit, rendered in shown.items():
        assert rendered.experiment is not None
        assert (rendered.experiment.variant, rendered.text) == (
            served[unit]["experiment"]["variant"],
            served[unit]["text"],
        )
    assert {r.experiment.variant for r in shown.values() if r.experiment} == {"production", "candidate"}
    assert recorder.statuses["POST /v1/exposures 202"] == 1, "every exposure taken, in one batch"
    for unit, rendered in shown.items():
        eventually(lambda unit=unit: bool(recorded_exposures(live, unit)), f"{unit}'s exposure written")
        assert rendered.experiment is not None
        assert [e["variant"] for e in recorded_exposures(live, unit)] == [rendered.experiment.variant]
