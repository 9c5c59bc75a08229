"""A dataset version streamed as JSONL or CSV, read in batches on its own session (the response outlives the
request's transaction)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.evals.formats import to_csv, to_jsonl
from registry.evals.repository import EvalRepository
from registry.evals.schemas import DatasetItemOut


async def _items(sessionmaker: async_sessionmaker[AsyncSession], version_id: int) -> AsyncIterator[DatasetItemOut]:
    async with sessionmaker() as session:
        async for rows in EvalRepository(session).all_items(version_id):
            for row in rows:
                yield DatasetItemOut.of(row)


async def stream_export(
    sessionmaker: async_sessionmaker[AsyncSession], version_id: int, export_format: str, variable_names: list[str]
) -> AsyncIterator[bytes]:
    batch: list[DatasetItemOut] = []
    first = True
    async for item in _items(sessionmaker, version_id):
        batch.append(item)
        if len(batch) >= 1000:
            yield _encode(batch, export_format, variable_names, header=first)
            batch, first = [], False
    if batch or first:
        yield _encode(batch, export_format, variable_names, header=first)


def _encode(batch: list[DatasetItemOut], export_format: str, names: list[str], *, header: bool) -> bytes:
    if export_format == "jsonl":
        return b"".join(to_jsonl(batch))
    parts = list(to_csv(batch, names))
    return b"".join(parts if header else parts[1:])
