"""An experiment's per-unit export read by spreadsheet users: unit ids are the callers' text."""

from __future__ import annotations

import csv
import io

import pyarrow.parquet as pq
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import Settings
from tests.conftest import AppClient, count_rows, problem
from tests.experiments.conftest import flush_and_aggregate, make_experiment, make_metric, make_prompt
from tests.seams.conftest import ok

Headers = dict[str, str]

# unit id -> its CSV cell: what would start a formula gets a leading ', plain numbers and other text stay
UNITS = {
    '=HYPERLINK("http://x.example","y")': '\'=HYPERLINK("http://x.example","y")',
    "+cmd|' /C calc'!A0": "'+cmd|' /C calc'!A0",
    "-2+3": "'-2+3",
    "@SUM(A1:A9)": "'@SUM(A1:A9)",
    "\tx": "'\tx",
    "-2": "-2",
    "+1.5e3": "+1.5e3",
    'a,b"c\nd': 'a,b"c\nd',
    "user=7": "user=7",
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"experiment_exposure_flush_seconds": 3600.0, "experiment_statistics_seconds": 3600.0}
    )


async def test_a_unit_id_that_would_run_as_a_formula_is_exported_as_text(client: AppClient, admin: Headers) -> None:
    await make_prompt(client, admin, "dec6-export")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "dec6-export-x", "dec6-export")
    for unit in UNITS:
        render = {"variables": {"x": "1"}, "unit": unit}
        await ok(await client.post("/v1/prompts/dec6-export/render", json=render, headers=admin))
    await flush_and_aggregate(client)

    response = await client.get("/v1/experiments/dec6-export-x/export?format=csv", headers=admin)
    assert response.status_code == 200, response.text
    cells = [row["unit"] for row in csv.DictReader(io.StringIO(response.text, newline=""))]
    assert sorted(cells) == sorted(UNITS.values())

    response = await client.get("/v1/experiments/dec6-export-x/export?format=parquet", headers=admin)
    assert response.status_code == 200, response.text
    assert sorted(pq.read_table(io.BytesIO(response.content)).column("unit").to_pylist()) == sorted(UNITS)


async def test_a_metric_key_that_would_repeat_an_export_column_is_refused(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    """A ratio metric ``epc`` exports ``epc.denominator`` beside ``epc``, and every export has the unit's columns:
    a metric named as one of them made the CSV's header name two columns alike and the Parquet file unreadable."""
    for key in ("epc.denominator", "variant", "unit", "in_analysis", "first_exposed_at"):
        response = await client.post("/v1/metrics", json={"key": key, "kind": "binomial"}, headers=admin)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in problem(response)["errors"]] == ["key"], key
    assert await count_rows(clean_database, "metrics") == 0
    await make_metric(client, admin, "denominator.epc")  # the suffix only


async def test_an_export_window_without_a_time_zone_or_reversed_is_refused_before_the_file_starts(
    client: AppClient, admin: Headers
) -> None:
    """A naive ``exposed_from`` failed the stream after its first bytes (a cut 200, no problem+json); a window
    ending before it starts answered an empty file, as if no unit had been exposed."""
    await make_prompt(client, admin, "dec6-window")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "dec6-window-x", "dec6-window")
    cases = {
        "exposed_from=2026-01-01T00:00:00": ["exposed_from"],
        "exposed_from=2026-01-01T00:00:00Z&exposed_to=2026-02-01T00:00:00": ["exposed_to"],
        "exposed_from=2026-02-01T00:00:00Z&exposed_to=2026-01-01T00:00:00Z": ["exposed_to"],
    }
    for query, fields in cases.items():
        for export_format in ("csv", "parquet"):
            path = f"/v1/experiments/dec6-window-x/export?format={export_format}&{query}"
            response = await client.get(path, headers=admin)
            assert response.status_code == 422, (query, response.text)
            assert [e["field"] for e in problem(response)["errors"]] == fields, query
    window = "exposed_from=2026-01-01T00:00:00%2B02:00&exposed_to=2026-01-01T00:00:00Z"
    response = await client.get(f"/v1/experiments/dec6-window-x/export?{window}", headers=admin)
    assert response.status_code == 200, response.text
    assert response.text.splitlines()[0].startswith("unit,variant")


async def test_a_refused_query_parameter_is_named_as_the_caller_sent_it(client: AppClient, admin: Headers) -> None:
    """``?format=json`` was refused naming ``export_format``, the handler's argument, a name the caller never sent."""
    cases = {
        "/v1/experiments/dec6-any/export?format=json": ["format"],
        "/v1/evals/datasets/dec6-any/versions/1/export?format=xlsx": ["format"],
        "/v1/prompts/dec6-any/diff?from=0&to=1": ["from"],
        "/v1/prompts/dec6-any/versions?state=gone": ["state"],
        "/v1/experiments/dec6-any/export?phase=0": ["phase"],
    }
    for path, fields in cases.items():
        response = await client.get(path, headers=admin)
        assert response.status_code == 422, (path, response.text)
        assert [e["field"] for e in problem(response)["errors"]] == fields, path
