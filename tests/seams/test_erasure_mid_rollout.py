"""A unit erased while a rollout routes it: its records lose it, and it comes back on the same side."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.seams.conftest import Served, eventually, ok, rows
from tests.seams.test_rollout_doors import CHAT, COMPLETE, door_body, prompt_in_rollout, side_of


async def test_an_erased_unit_leaves_no_trace_and_is_routed_to_its_side_again(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    client = await served(
        completion_cache_ttl_seconds=60.0, rollout_check_seconds=3600.0, experiment_exposure_flush_seconds=0.05
    )
    rollout = await prompt_in_rollout(client, admin)
    key = rollout["experiment"]
    # Units of this test's own: an erasure refuses its unit's exact-cache writes for an hour, in the Redis the
    # whole run shares, so a unit another test erased would find no cached answer to count here.
    prefix = f"erased-{uuid.uuid4().hex[:8]}"
    units: dict[str, str] = {}
    for i in range(40):
        units.setdefault(await side_of(client, admin, key, f"{prefix}-{i}"), f"{prefix}-{i}")
    for unit in units.values():
        assert (await client.post(CHAT, json=door_body(unit), headers=admin)).status_code == 200
        complete = {"variables": {"name": "Ada"}, "unit": unit}
        assert (await client.post(COMPLETE, json=complete, headers=admin)).status_code == 200

    async def exposed() -> bool:
        found = await rows(clean_database, "SELECT unit FROM exposures")
        return {r["unit"] for r in found} == set(units.values())

    await eventually(exposed, "both units' exposures written")
    erased_unit, kept_unit = units["production"], units["candidate"]
    erased = await ok(await client.delete(f"/v1/units/{erased_unit}", headers=admin))
    assert (erased["exposures"], erased["cached_completions"]) == (1, 1)
    assert (await client.get(f"/v1/units/{erased_unit}", headers=admin)).status_code == 404

    await ok(await client.get("/v1/usage", headers=admin))  # buffered completions are written now, without the unit
    recorded = await rows(clean_database, "SELECT unit, variant, prompt_text, request_id FROM completions ORDER BY id")
    assert len(recorded) == 4
    assert [r["unit"] for r in recorded].count(kept_unit) == 2
    for row in recorded:
        if row["variant"] == "production":
            assert (row["unit"], row["prompt_text"], row["request_id"]) == (None, None, None), row

    again = await client.post(CHAT, json=door_body(erased_unit), headers=admin)
    assert again.status_code == 200
    assert again.headers["x-registry-variant"] == "production"
    assert again.headers["x-registry-cached"] == "false"  # the answer stored from its request was deleted
    shown = await ok(await client.get(f"/v1/rollouts/{rollout['id']}", headers=admin))
    assert shown["status"] == "running"
    kept = await ok(await client.get(f"/v1/units/{kept_unit}", headers=admin))
    assert [e["variant"] for e in kept["exposures"]] == ["candidate"]
