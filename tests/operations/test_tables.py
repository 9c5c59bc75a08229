"""The archive's table list covers the whole schema, and values survive the trip through JSON."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Column, Date, DateTime, Integer, LargeBinary, MetaData, String, Table

from registry.cli import admin_commands
from registry.db import models
from registry.operations.tables import (
    EXCLUDED,
    OPTIONAL_GROUPS,
    TABLE_GROUPS,
    UnclassifiedTableError,
    archived_tables,
    codecs,
    decode_row,
    encode_row,
    groups_for,
    unclassified_tables,
)


def test_every_table_is_archived_or_excluded_with_a_reason() -> None:
    assert unclassified_tables(models.Base.metadata) == []
    assert set(TABLE_GROUPS).isdisjoint(EXCLUDED)
    assert all(reason for reason in EXCLUDED.values())


def test_a_new_table_that_is_neither_archived_nor_excluded_stops_the_backup() -> None:
    metadata = MetaData()
    Table("prompts", metadata, Column("id", Integer, primary_key=True))
    Table("shiny_new_things", metadata, Column("id", Integer, primary_key=True))
    assert unclassified_tables(metadata) == ["shiny_new_things"]
    with pytest.raises(UnclassifiedTableError, match="shiny_new_things"):
        archived_tables(metadata, groups_for([]))


def test_parents_come_before_children() -> None:
    names = [t.name for t in archived_tables(models.Base.metadata, groups_for(["exposures", "events", "usage"]))]
    assert names.index("prompts") < names.index("prompt_versions")
    assert names.index("experiments") < names.index("experiment_variants")
    assert names.index("experiments") < names.index("exposures")


def test_the_core_leaves_out_exposures_events_and_usage_unless_asked() -> None:
    core = {t.name for t in archived_tables(models.Base.metadata, groups_for([]))}
    assert {"prompts", "api_keys", "webhooks", "eval_gates", "experiment_phases"} <= core
    assert core.isdisjoint({"exposures", "outcome_events", "completions", "unit_metric_values"})
    everything = {t.name for t in archived_tables(models.Base.metadata, groups_for(["exposures", "events", "usage"]))}
    assert {"exposures", "outcome_events", "completions", "usage_daily", "unit_metric_values"} <= everything
    assert everything.isdisjoint(EXCLUDED)


def test_statistics_travel_only_with_both_their_sources() -> None:
    assert "statistics" not in groups_for(["exposures"])
    assert "statistics" in groups_for(["exposures", "events"])


def test_the_command_offers_the_optional_groups_there_are() -> None:
    assert admin_commands.OPTIONAL_GROUPS == OPTIONAL_GROUPS


def test_an_unknown_group_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown group"):
        groups_for(["everything"])


def test_values_travel_as_dialect_neutral_json_and_come_back_equal() -> None:
    table = Table(
        "t",
        MetaData(),
        Column("at", DateTime(timezone=True)),
        Column("day", Date),
        Column("blob", LargeBinary),
        Column("name", String),
        Column("n", Integer),
    )
    row = {
        "at": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "day": date(2026, 1, 2),
        "blob": b"\x00\xff",
        "name": "x",
        "n": None,
    }
    encoded = encode_row(row, codecs(table))
    assert encoded == {
        "at": "2026-01-02T03:04:05.000006+00:00",
        "day": "2026-01-02",
        "blob": "AP8=",
        "name": "x",
        "n": None,
    }
    assert decode_row(encoded, codecs(table)) == row
