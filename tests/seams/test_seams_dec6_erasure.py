"""A unit's data where experiments name it: their forced variants (QA units pinned by id)."""

from __future__ import annotations

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


async def test_a_units_forced_variants_are_shown_to_it_and_erased_with_it(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    """The access request answered 404 ("no data on this unit") while experiments pinned the unit by its id, and
    the erasure left the id in their definitions."""
    await make_prompt(client, admin, "dec6-pin")
    await make_metric(client, admin, "converted")
    pins = {"dec6-qa@example.com": "treatment", "dec6-other": "control"}
    await make_experiment(client, admin, "dec6-pin-x", "dec6-pin", forced_variants=pins)

    held = await ok(await client.get("/v1/units/dec6-qa@example.com", headers=admin))
    assert held["forced_variants"] == [{"experiment": "dec6-pin-x", "variant": "treatment"}]

    erased = await ok(await client.delete("/v1/units/dec6-qa@example.com", headers=admin))
    assert erased["forced_variants"] == 1
    experiment = await ok(await client.get("/v1/experiments/dec6-pin-x", headers=admin))
    assert experiment["forced_variants"] == {"dec6-other": "control"}
    gone = await client.get("/v1/units/dec6-qa@example.com", headers=admin)
    assert gone.status_code == 404, gone.text

    audit = await rows(
        clean_database,
        "SELECT actor, before, after FROM audit_log WHERE action = 'experiment.update' AND resource_name = :key",
        key="dec6-pin-x",
    )
    assert len(audit) == 1
    assert audit[0]["actor"] == "admin"
    assert (audit[0]["before"]["forced_variants"], audit[0]["after"]["forced_variants"]) == (
        {"control": 1, "treatment": 1},
        {"control": 1},
    )
    assert "dec6-qa" not in str(audit)
