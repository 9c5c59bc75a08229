"""Per-unit rows of an experiment phase, streamed as CSV or Parquet.

One row per unit: its variant (empty when it was seen in several, which also
leaves it out of the analysis), its first exposure and each metric's value
(0 for ``sum``/``count``/``any`` metrics without data, empty for ``mean`` and
``max``). Rows are read with a server-side cursor and written as they come,
so memory stays flat whatever the number of units.

Unit ids are the callers' text, and a spreadsheet runs a CSV cell that starts
with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return as a formula: the
CSV writes such a unit with a leading ``'`` (``csv_cell``), as spreadsheets
themselves write text that is not a formula. Parquet keeps units as they are.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.experiments.repository import ExportRepository

ExportFormat = Literal["csv", "parquet"]
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}
_ROWS_PER_CHUNK = 5000
UNIT_COLUMNS = ("unit", "variant", "first_exposed_at", "in_analysis")
DENOMINATOR_SUFFIX = ".denominator"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def export_column_problem(key: str) -> str | None:
    """Why a metric named ``key`` would share its export column's name with another column, or None."""
    if key in UNIT_COLUMNS:
        return f"'{key}' names a column of every export; choose another key"
    if key.endswith(DENOMINATOR_SUFFIX):
        return f"a key ending in '{DENOMINATOR_SUFFIX}' names a ratio metric's denominator column in exports"
    return None


def csv_cell(text: str) -> str:
    """``text`` as a spreadsheet shows it rather than runs it: with a leading ``'`` when it would start a formula
    (a plain number such as ``-2`` is left alone: a spreadsheet reads it as the number it is)."""
    if text.startswith(_FORMULA_STARTS) and not _NUMBER.fullmatch(text):
        return f"'{text}"
    return text


@dataclass(frozen=True, slots=True)
class ExportColumn:
    """A metric's per-unit value; a ratio metric has a second column, ``<key>.denominator``.

    Column names are unique (a reader of a Parquet file with two alike cannot read it): no metric key is one of
    ``UNIT_COLUMNS`` or ends in ``DENOMINATOR_SUFFIX`` (``export_column_problem``)."""

    metric_id: int
    key: str
    zero_filled: bool  # units without data are 0, not empty
    denominator: bool = False


@dataclass(frozen=True, slots=True)
class ExportPlan:
    """What to export, checked before the response starts (errors after that cannot become a problem+json)."""

    experiment_id: int
    experiment: str
    phase: int
    columns: Sequence[ExportColumn]
    exposed_from: datetime | None
    exposed_to: datetime | None
    format: ExportFormat

    @property
    def filename(self) -> str:
        safe = self.experiment.replace("/", "_")
        return f"{safe}-phase{self.phase}.{self.format}"

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


class _Sink(io.RawIOBase):
    """Collects what the Parquet writer writes, to hand it on in pieces."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buffer += data
        return len(data)

    def take(self) -> bytes:
        taken, self.buffer = bytes(self.buffer), bytearray()
        return taken


class ExportService:
    """Streams in its own session: the response body is written after the request's transaction has ended."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker

    async def _rows(self, plan: ExportPlan) -> AsyncIterator[list[Any]]:
        """Rows of (unit, variant, first exposure, in analysis, *metric values), in batches."""
        position: dict[tuple[int | None, bool], int] = {
            (c.metric_id, c.denominator): i for i, c in enumerate(plan.columns)
        }
        empty = [0.0 if c.zero_filled else None for c in plan.columns]
        batch: list[Any] = []
        current: list[Any] | None = None
        async with self._sessionmaker() as session:
            rows = ExportRepository(session).unit_rows(
                plan.experiment_id, plan.phase, exposed_from=plan.exposed_from, exposed_to=plan.exposed_to
            )
            async for unit, variant, first, metric_id, value, pre_value in rows:
                if current is None or current[0] != unit:
                    if current is not None:
                        batch.append(current)
                        if len(batch) >= _ROWS_PER_CHUNK:
                            yield batch
                            batch = []
                    current = [unit, variant, first, variant is not None, *empty]
                if (metric_id, False) in position:
                    current[4 + position[(metric_id, False)]] = value
                if (metric_id, True) in position:
                    current[4 + position[(metric_id, True)]] = pre_value
        if current is not None:
            batch.append(current)
        if batch:
            yield batch

    def header(self, plan: ExportPlan) -> list[str]:
        return [*UNIT_COLUMNS, *(c.key for c in plan.columns)]

    async def stream(self, plan: ExportPlan) -> AsyncIterator[bytes]:
        if plan.format == "csv":
            async for chunk in self._csv(plan):
                yield chunk
        else:
            async for chunk in self._parquet(plan):
                yield chunk

    async def _csv(self, plan: ExportPlan) -> AsyncIterator[bytes]:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(self.header(plan))
        async for batch in self._rows(plan):
            for unit, variant, first, in_analysis, *values in batch:
                writer.writerow([csv_cell(unit), variant or "", first.isoformat(), str(in_analysis).lower(), *values])
            yield text.getvalue().encode()
            text.seek(0)
            text.truncate()
        if text.tell():
            yield text.getvalue().encode()

    async def _parquet(self, plan: ExportPlan) -> AsyncIterator[bytes]:
        schema = pa.schema(
            [
                ("unit", pa.string()),
                ("variant", pa.string()),
                ("first_exposed_at", pa.timestamp("us", tz="UTC")),
                ("in_analysis", pa.bool_()),
                *((c.key, pa.float64()) for c in plan.columns),
            ]
        )
        sink = _Sink()
        writer = pq.ParquetWriter(sink, schema)
        try:
            async for batch in self._rows(plan):
                columns = list(zip(*batch, strict=True))
                writer.write_table(
                    pa.Table.from_arrays(
                        [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)], schema=schema
                    )
                )
                yield sink.take()
        finally:
            writer.close()
        yield sink.take()
