"""Experiments whose variants run with their own model config (and that config's fallback).

The router keeps a copy of every running experiment; loading one whose variant's config has a
fallback once failed for all of them, so no unit was routed anywhere. These tests combine the
features, and check that an experiment that cannot be loaded leaves the others routing.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import InvalidRequestError

from registry.experiments import router as router_module
from registry.experiments.models import Experiment
from registry.experiments.repository import ExperimentRepository
from registry.experiments.router import ExperimentRouter
from tests.experiments.conftest import Client, make_experiment, make_prompt, runtime_of, settle


async def make_config(
    client: Client, headers: dict[str, str], name: str, model: str, fallback: str | None = None
) -> None:
    """A config with version 1 (and, when given, the fallback ``fallback@1``)."""
    response = await client.post("/v1/configs", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = {"backend": "vllm", "model": model}
    if fallback is not None:
        body["fallback"] = {"name": fallback, "version": 1}
    response = await client.post(f"/v1/configs/{name}/versions", json=body, headers=headers)
    assert response.status_code == 201, response.text


VARIANTS_WITH_CONFIG = [
    {"key": "c", "prompt_version": 1},
    {"key": "t", "prompt_version": 2, "config": {"name": "b", "version": 1}},
]
FORCED = {"unit-c": "c", "unit-t": "t"}


@pytest.fixture
async def with_configs(client: Client, setup: dict[str, str]) -> dict[str, str]:
    """Configs 'spare' and 'b' (whose fallback is spare@1), and a second prompt 'other'."""
    await make_config(client, setup, "spare", "spare-model")
    await make_config(client, setup, "b", "b-model", fallback="spare")
    await make_prompt(client, setup, "other")
    return setup


class RecordedLog:
    """Stands in for the router's logger: what it logged, as (level, event, fields)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.entries.append((level, event, fields))

    def about(self, key: str) -> list[str]:
        return [event for _, event, fields in self.entries if fields.get("experiment") == key]


async def render(client: Client, headers: dict[str, str], prompt: str, unit: str) -> dict[str, Any]:
    response = await client.post(
        f"/v1/prompts/{prompt}/render", json={"variables": {"x": "hi"}, "unit": unit}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_variant_with_a_config_that_has_a_fallback_routes_render_and_resolve(
    client: Client, with_configs: dict[str, str]
) -> None:
    headers = with_configs
    await make_experiment(client, headers, "tone", "greet", variants=VARIANTS_WITH_CONFIG, forced_variants=FORCED)
    await make_experiment(client, headers, "plain", "other")

    treated = await render(client, headers, "greet", "unit-t")
    control = await render(client, headers, "greet", "unit-c")
    resolved = await client.get("/v1/prompts/greet", params={"unit": "unit-t"}, headers=headers)
    elsewhere = await render(client, headers, "other", "someone")

    assert treated["experiment"] == {"key": "tone", "phase": 1, "variant": "t", "in_experiment": True}
    assert treated["version"] == 2
    assert treated["config"] == {"name": "b", "version": 1, "model": "b-model"}
    assert control["experiment"]["variant"] == "c"
    assert control["version"] == 1
    assert resolved.headers["X-Registry-Variant"] == "t"
    assert resolved.json()["version"]["version"] == 2
    assert elsewhere["experiment"] is not None  # the other running experiment routes too
    assert elsewhere["experiment"]["key"] == "plain"


async def test_a_variant_config_routes_after_a_restart(client: Client, with_configs: dict[str, str]) -> None:
    headers = with_configs
    await make_experiment(client, headers, "tone", "greet", variants=VARIANTS_WITH_CONFIG, forced_variants=FORCED)
    router = runtime_of(client.app).experiments.router

    await router.reload()  # what a fresh process does at start and the periodic refresh every 30 s

    assert router.running("tone") is not None
    assert (await render(client, headers, "greet", "unit-t"))["experiment"]["variant"] == "t"


async def test_an_experiment_that_cannot_be_loaded_leaves_the_others_routing(
    client: Client, with_configs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = with_configs
    await make_experiment(client, headers, "broken", "greet", start=False)
    await make_experiment(client, headers, "plain", "other")
    original = router_module.LiveExperiment.of.__func__  # type: ignore[attr-defined]

    def failing_for_broken(cls: type[router_module.LiveExperiment], experiment: Experiment) -> Any:
        if experiment.key == "broken":
            raise RuntimeError("cannot read this experiment")
        return original(cls, experiment)

    monkeypatch.setattr(router_module.LiveExperiment, "of", classmethod(failing_for_broken))
    router = runtime_of(client.app).experiments.router
    assert (await client.post("/v1/experiments/broken/start", headers=headers)).status_code == 200
    await settle(client)

    log = RecordedLog()
    monkeypatch.setattr(router_module, "logger", log)
    for _ in range(3):  # three periodic refreshes
        await router.reload()
    routed = await render(client, headers, "other", "someone")
    broken = await render(client, headers, "greet", "someone")
    metrics = (await client.get("/metrics")).text
    ready = await client.get("/ready")

    assert routed["experiment"]["key"] == "plain"
    assert broken["experiment"] is None
    assert "registry_experiments_unloadable 1.0" in metrics
    assert ready.status_code == 200
    assert ready.json()["experiments_unloadable"] == ["broken"]
    assert log.about("broken") == []  # logged once already, when it was started

    monkeypatch.setattr(router_module.LiveExperiment, "of", classmethod(original))
    await router.reload()
    assert (await render(client, headers, "greet", "someone"))["experiment"]["key"] == "broken"
    assert "registry_experiments_unloadable 0.0" in (await client.get("/metrics")).text
    assert (await client.get("/ready")).json()["experiments_unloadable"] == []
    assert log.about("broken") == ["experiment loaded again"]


async def test_an_unloadable_experiment_is_logged_once_per_change(
    client: Client, with_configs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = with_configs
    await make_experiment(client, headers, "broken", "greet")
    original = router_module.LiveExperiment.of.__func__  # type: ignore[attr-defined]
    calls = 0

    def failing_for_broken(cls: type[router_module.LiveExperiment], experiment: Experiment) -> Any:
        nonlocal calls
        if experiment.key == "broken":
            calls += 1
            raise RuntimeError("cannot read this experiment")
        return original(cls, experiment)

    monkeypatch.setattr(router_module.LiveExperiment, "of", classmethod(failing_for_broken))
    router = runtime_of(client.app).experiments.router

    log = RecordedLog()
    monkeypatch.setattr(router_module, "logger", log)
    for _ in range(3):
        await router.reload()

    assert calls == 3
    assert log.about("broken") == ["experiment cannot be loaded"]
    assert router.running("broken") is not None  # it routes as it was last loaded


async def test_when_the_one_query_fails_each_experiment_is_read_on_its_own(
    client: Client, with_configs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = with_configs
    await make_experiment(client, headers, "broken", "greet")
    await make_experiment(client, headers, "plain", "other")
    read_one = ExperimentRepository.get

    async def cannot_read_all(self: ExperimentRepository) -> Any:
        raise InvalidRequestError("a row cannot be read")

    async def cannot_read_broken(self: ExperimentRepository, key: str, *, for_update: bool = False) -> Any:
        if key == "broken":
            raise InvalidRequestError("this row cannot be read")
        return await read_one(self, key, for_update=for_update)

    monkeypatch.setattr(ExperimentRepository, "running", cannot_read_all)
    monkeypatch.setattr(ExperimentRepository, "get", cannot_read_broken)
    runtime = runtime_of(client.app)
    fresh = ExperimentRouter(runtime.sessionmaker, runtime.bus, runtime.experiments.exposures)  # a new process

    await fresh.reload()

    assert fresh.running("plain") is not None
    assert fresh.running("broken") is None
    assert fresh.unloadable == ["broken"]
    assert fresh.route("other", "someone") is not None
