"""The audit log read by whoever asks who changed an experiment, and how: each change shows in its entry."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import Settings
from tests.conftest import AppClient
from tests.experiments.conftest import make_experiment, make_metric, make_prompt
from tests.seams.conftest import ok, rows

Headers = dict[str, str]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"experiment_exposure_flush_seconds": 3600.0, "experiment_statistics_seconds": 3600.0}
    )


async def updates(engine: AsyncEngine, key: str) -> list[dict[str, Any]]:
    return await rows(
        engine,
        "SELECT actor, before, after FROM audit_log WHERE action = 'experiment.update' AND resource_name = :key "
        "ORDER BY id",
        key=key,
    )


async def test_an_experiments_audit_entry_shows_a_variants_config_and_the_analysis_settings_changing(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    """Which config a variant's units complete with, the alpha that judges the results, which variant a forced unit
    gets: an update changing only one of them left an entry whose before and after were equal."""
    await make_prompt(client, admin, "dec6-audit")
    await make_metric(client, admin, "converted")
    await ok(await client.post("/v1/configs", json={"name": "dec6-small"}, headers=admin))
    for model in ("small", "large"):
        body = {"backend": "vllm", "model": model}
        await ok(await client.post("/v1/configs/dec6-small/versions", json=body, headers=admin))
    variants = [
        {"key": "control", "prompt_version": 1},
        {"key": "treatment", "prompt_version": 2, "config": {"name": "dec6-small", "version": 1}},
    ]
    await make_experiment(client, admin, "dec6-audit-x", "dec6-audit", start=False, variants=variants)
    variants[1]["config"] = {"name": "dec6-small", "version": 2}
    await ok(await client.patch("/v1/experiments/dec6-audit-x", json={"variants": variants}, headers=admin))
    await ok(await client.patch("/v1/experiments/dec6-audit-x", json={"alpha": 0.2}, headers=admin))
    for variant in ("control", "treatment"):  # a QA unit moved to the other variant: as many forced units
        forced = {"forced_variants": {"qa-unit": variant}}
        await ok(await client.patch("/v1/experiments/dec6-audit-x", json=forced, headers=admin))

    config_change, alpha_change, _, moved = await updates(clean_database, "dec6-audit-x")
    assert config_change["actor"] == alpha_change["actor"] == "admin"
    treatment = (config_change["before"]["variants"]["treatment"], config_change["after"]["variants"]["treatment"])
    assert [side["config"] for side in treatment] == ["dec6-small@1", "dec6-small@2"]
    assert config_change["after"]["variants"]["control"]["config"] is None
    alphas = (alpha_change["before"]["analysis"]["alpha"], alpha_change["after"]["analysis"]["alpha"])
    assert alphas == (0.05, 0.2)
    assert (moved["before"]["forced_variants"], moved["after"]["forced_variants"]) == ({"control": 1}, {"treatment": 1})
    assert "qa-unit" not in str(moved)
