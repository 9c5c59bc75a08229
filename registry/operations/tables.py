"""Which tables a backup holds, and how their values travel: pure, driven by the SQLAlchemy metadata.

Every table in ``Base.metadata`` is either in ``TABLE_GROUPS`` (archived, always or on request) or in
``EXCLUDED`` (with the reason); a test fails when a new table is in neither, so a new table is never
silently left out of backups.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import Date, DateTime, LargeBinary, MetaData, Table, TypeDecorator

from registry.lib.errors import RegistryError

FORMAT_VERSION = 1

# Optional groups, named on the command line (``--include exposures,events,usage``).
OPTIONAL_GROUPS = ("exposures", "events", "usage")

TABLE_GROUPS: Mapping[str, str] = {
    # core: always archived
    "api_keys": "core",  # hashes only; a secret is never stored anywhere
    "api_key_budgets": "core",
    "audit_log": "core",
    "prompts": "core",
    "prompt_versions": "core",
    "prompt_transitions": "core",
    "model_configs": "core",
    "model_config_versions": "core",
    "model_config_transitions": "core",
    "metrics": "core",
    "experiments": "core",
    "experiment_phases": "core",
    "experiment_variants": "core",
    "experiment_metrics": "core",
    "webhooks": "core",  # secrets as stored
    "eval_datasets": "core",
    "eval_dataset_versions": "core",
    "eval_dataset_items": "core",
    "eval_gates": "core",
    "eval_runs": "core",
    "eval_run_items": "core",
    "rollouts": "core",
    "rollout_events": "core",
    "semantic_cache_settings": "core",
    "alert_rules": "core",
    "alert_incidents": "core",  # the alerts' history; a firing one resolves at the first evaluation that clears
    # exposures: who saw which variant
    "exposures": "exposures",
    "experiment_units": "exposures",
    "experiment_variant_counts": "exposures",
    "experiment_hourly_units": "exposures",
    # events: outcome events
    "outcome_events": "events",
    # statistics folded from exposures and events: copied as they were when both are archived (a consistent
    # snapshot of sources and sums), so results answer at once after a restore, without a rebuild
    "unit_changes": "statistics",
    "unit_metric_values": "statistics",
    "experiment_metric_sums": "statistics",
    "experiment_metric_histograms": "statistics",
    "experiment_hourly_metric_sums": "statistics",
    # usage: completion records and their daily rollup
    "completions": "usage",
    "usage_daily": "usage",
}

EXCLUDED: Mapping[str, str] = {
    "change_log": "cache invalidations between running processes; meaningless in another database",
    "console_sessions": "console sign-ins; their sealed keys open only with the old deployment's secret",
    "outbox_events": "events waiting to be sent as webhooks; a restore must not send old events again",
    "webhook_deliveries": "delivery attempts of old events; a restore must not retry them",
    "semantic_cache_entries": "cached answers with their embeddings; they expire within a day, and a restored "
    "registry starts with an empty semantic cache (entries are answers of the old deployment's backends)",
}

Group = Literal["core", "exposures", "events", "statistics", "usage"]
ValueKind = Literal["datetime", "date", "binary", "plain"]


class UnclassifiedTableError(RegistryError):
    """A table is neither archived nor excluded: decide, in ``registry/operations/tables.py``."""

    type = "backup_table_unclassified"
    title = "Table neither archived nor excluded"


def unclassified_tables(metadata: MetaData) -> list[str]:
    """Tables of the metadata that neither ``TABLE_GROUPS`` nor ``EXCLUDED`` names."""
    return sorted(name for name in metadata.tables if name not in TABLE_GROUPS and name not in EXCLUDED)


def groups_for(include: Iterable[str]) -> frozenset[str]:
    """The groups a backup holds: core, the optional ones asked for, statistics when both its sources are."""
    chosen = {"core", *include}
    unknown = chosen - {"core", *OPTIONAL_GROUPS}
    if unknown:
        raise ValueError(f"unknown group(s) {', '.join(sorted(unknown))}; choose from {', '.join(OPTIONAL_GROUPS)}")
    if {"exposures", "events"} <= chosen:
        chosen.add("statistics")
    return frozenset(chosen)


def archived_tables(metadata: MetaData, groups: frozenset[str]) -> list[Table]:
    """The tables to archive, parents before children (the order a restore inserts them in)."""
    missing = unclassified_tables(metadata)
    if missing:
        raise UnclassifiedTableError(f"tables neither archived nor excluded: {', '.join(missing)}")
    return [t for t in metadata.sorted_tables if TABLE_GROUPS.get(t.name) in groups]


@dataclass(frozen=True)
class ColumnCodec:
    name: str
    kind: ValueKind


def value_kind(column_type: Any) -> ValueKind:
    inner = column_type.impl_instance if isinstance(column_type, TypeDecorator) else column_type
    if isinstance(inner, DateTime):
        return "datetime"
    if isinstance(inner, Date):
        return "date"
    if isinstance(inner, LargeBinary):
        return "binary"
    return "plain"  # numbers, text, booleans; JSON columns travel as JSON


def codecs(table: Table) -> list[ColumnCodec]:
    return [ColumnCodec(c.name, value_kind(c.type)) for c in table.columns]


def encode_row(row: Mapping[str, Any], columns: list[ColumnCodec]) -> dict[str, Any]:
    """A row as dialect-neutral JSON: datetimes ISO 8601 with their timezone, dates ISO, binary as base64."""
    out: dict[str, Any] = {}
    for column in columns:
        value = row[column.name]
        if value is None or column.kind == "plain":
            out[column.name] = value
        elif column.kind in ("datetime", "date"):
            out[column.name] = value.isoformat()
        else:
            out[column.name] = base64.b64encode(value).decode("ascii")
    return out


def decode_row(data: Mapping[str, Any], columns: list[ColumnCodec]) -> dict[str, Any]:
    """The inverse of ``encode_row``; a column missing from the archive is an error, not a silent NULL."""
    out: dict[str, Any] = {}
    for column in columns:
        value = data[column.name]
        if value is None or column.kind == "plain":
            out[column.name] = value
        elif column.kind == "datetime":
            out[column.name] = datetime.fromisoformat(value)
        elif column.kind == "date":
            out[column.name] = date.fromisoformat(value)
        else:
            out[column.name] = base64.b64decode(value)
    return out
