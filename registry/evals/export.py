"""A dataset version streamed as JSONL or CSV, read in batches on its own session (the response outlives the
request's transaction)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.evals.formats import to_csv, to_jsonl
from registry.evals.repository import EvalRepository
from registry.evals.schemas import DatasetItemOut


async def _items(sessionmaker: async_sessionmaker[AsyncSession], version_id: int) -> AsyncIterator[DatasetItemOut]:
    """The items in order, a batch per session: no connection is held while a slow reader takes a batch."""
    after = 0
    while True:
        async with sessionmaker() as session:
            rows = await EvalRepository(session).items(version_id, after=after, limit=2000)
            batch = [DatasetItemOut.of(row) for row in rows]
        if not batch:
            return
        for item in batch:
            yield item
        after = batch[-1].position


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
