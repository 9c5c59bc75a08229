"""A dataset version streamed as JSONL or CSV, read in batches on its own session (the response outlives the
request's transaction).

Exports read from the read replica, which may lag the primary: a version just created may not be there yet. A
version is written with all its items in one transaction and never changes, and the primary said how many items it
holds, so a replica short of a batch has not caught up with the version: that batch and the rest are read from the
primary. An export is never cut short, or empty, because the replica lags.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from registry.evals.formats import to_csv, to_jsonl
from registry.evals.repository import EvalRepository
from registry.evals.schemas import DatasetItemOut

BATCH = 2000


async def _batch(
    sessionmaker: async_sessionmaker[AsyncSession], version_id: int, *, after: int, limit: int
) -> Sequence[DatasetItemOut]:
    async with sessionmaker() as session:
        rows = await EvalRepository(session).items(version_id, after=after, limit=limit)
        return [DatasetItemOut.of(row) for row in rows]


async def _items(
    replica: async_sessionmaker[AsyncSession],
    primary: async_sessionmaker[AsyncSession],
    version_id: int,
    item_count: int,
) -> AsyncIterator[DatasetItemOut]:
    """The version's ``item_count`` items in order, a batch per session: no connection is held while a slow reader
    takes a batch. From the replica while it has them, then from the primary (see the module's text)."""
    sessionmaker = replica
    after, left = 0, item_count
    while left > 0:
        limit = min(BATCH, left)
        batch = await _batch(sessionmaker, version_id, after=after, limit=limit)
        if len(batch) < limit and sessionmaker is not primary:
            sessionmaker = primary
            batch = await _batch(primary, version_id, after=after, limit=limit)
        if not batch:  # gone from the primary too: the dataset was deleted meanwhile
            return
        for item in batch:
            yield item
        after = batch[-1].position
        left -= len(batch)


async def stream_export(
    replica: async_sessionmaker[AsyncSession],
    primary: async_sessionmaker[AsyncSession],
    version_id: int,
    item_count: int,
    export_format: str,
    variable_names: list[str],
) -> AsyncIterator[bytes]:
    """``item_count``: how many items the version holds, as the primary says (its row, read by the request)."""
    batch: list[DatasetItemOut] = []
    first = True
    async for item in _items(replica, primary, version_id, item_count):
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
