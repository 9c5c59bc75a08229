"""A usage record the database refuses is dropped alone; text it cannot hold is stored as U+FFFD.

One such record used to fail its batch on every flush, and the batch was put back each time, so no usage record of
any key was written again until the process ended.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.completions.usage import UsageRecorder
from registry.db.engine import create_engine, create_sessionmaker
from registry.settings import Settings
from tests.conftest import free_port


def completion(request_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "prompt": "greet",
        "request_id": request_id,
        "unit": f"unit-{request_id}",
        "status": "ok",
        "output_tokens": 2,
        "cost": 0.5,
        **fields,
    }


async def written(engine: AsyncEngine, columns: str = "request_id") -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        query = f"SELECT {columns} FROM completions ORDER BY request_id"
        return [tuple(row) for row in (await connection.execute(text(query))).all()]


async def test_a_record_the_database_refuses_is_dropped_and_the_others_are_written(
    migrated_engine: AsyncEngine,
) -> None:
    recorder = UsageRecorder(create_sessionmaker(migrated_engine))
    for i in range(5):
        recorder.add(completion(f"req-{i}"))
    recorder.add(completion("req-refused", prompt=None))  # NOT NULL: refused by the database on every try
    for i in range(5, 9):
        recorder.add(completion(f"req-{i}"))
    await recorder.flush()

    assert await written(migrated_engine) == [(f"req-{i}",) for i in range(9)]
    assert recorder.refused == 1
    recorder.add(completion("req-later"))
    await recorder.flush()
    assert len(await written(migrated_engine)) == 10  # nothing held back behind it


async def test_a_value_past_its_column_is_dropped_alone_on_postgresql(clean_database: AsyncEngine) -> None:
    recorder = UsageRecorder(create_sessionmaker(clean_database))
    recorder.add(completion("req-a"))
    recorder.add(completion("req-too-many", output_tokens=2**40))  # past INTEGER
    recorder.add(completion("req-b", finish_reason="x" * 33))  # past String(32): a backend's odd finish reason
    recorder.add(completion("req-c"))
    await recorder.flush()

    assert await written(clean_database) == [("req-a",), ("req-c",)]
    assert recorder.refused == 2


async def test_a_nul_in_a_records_text_is_stored_as_the_replacement_character(migrated_engine: AsyncEngine) -> None:
    recorder = UsageRecorder(create_sessionmaker(migrated_engine))
    recorder.add(
        completion(
            "req-nul",
            prompt_text="Say hello to A\x00da.",  # rendered from variables that held one
            completion_text="bad\x00answer",  # the model's answer
            finish_reason="st\x00p",
            guard_outcomes=[{"guard": "g\x00", "findings": {"k\x00": "v\x00"}}],
        )
    )
    recorder.add(completion("req-plain", prompt_text="Say hello to Bob.", completion_text="Hello"))
    await recorder.flush()

    rows = await written(migrated_engine, "request_id, prompt_text, completion_text, finish_reason, guard_outcomes")
    assert [row[:4] for row in rows] == [
        ("req-nul", "Say hello to A\ufffdda.", "bad\ufffdanswer", "st\ufffdp"),
        ("req-plain", "Say hello to Bob.", "Hello", None),
    ]
    outcomes = json.loads(rows[0][4]) if isinstance(rows[0][4], str) else rows[0][4]  # SQLite's JSON is text
    assert outcomes == [{"guard": "g\ufffd", "findings": {"k\ufffd": "v\ufffd"}}]
    assert recorder.refused == 0


async def test_a_batch_the_database_could_not_take_is_kept_whole_for_the_next_flush(
    migrated_engine: AsyncEngine,
) -> None:
    settings = Settings(database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")
    unreachable = create_engine(settings)
    recorder = UsageRecorder(create_sessionmaker(unreachable))
    recorder.add(completion("req-a", api_key_id="k"))
    recorder.add(completion("req-b", api_key_id="k"))
    await recorder.flush()  # the database is not there: not a refusal of the data
    await unreachable.dispose()

    assert recorder.refused == 0
    assert recorder.pending_spend("k") == (4, 1.0)
    recorder._sessionmaker = create_sessionmaker(migrated_engine)  # the database is back
    await recorder.flush()
    assert await written(migrated_engine) == [("req-a",), ("req-b",)]
