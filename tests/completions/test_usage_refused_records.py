"""A usage record the database refuses is dropped alone, its spend still counted against its key's budget; text it
cannot hold is stored as U+FFFD, and a backend's string longer than its column is stored cut to fit.

One such record used to fail its batch on every flush, and the batch was put back each time, so no usage record of
any key was written again until the process ended. Then a refused record's spend left the budget's count with it,
though the backend had been paid, and a backend's finish reason past 32 characters got every one of its records
refused.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope
from registry.completions.metrics import CompletionMetrics
from registry.completions.usage import UsageRecorder
from registry.db.base import utcnow
from registry.db.engine import create_engine, create_sessionmaker
from registry.settings import Settings
from tests.completions.conftest import backend, publish, unique
from tests.completions.fault_server import FaultServer
from tests.conftest import KeyFactory, free_port, problem, serve_in_process


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


async def test_a_number_past_its_column_is_dropped_alone_and_a_string_past_its_column_is_cut_on_postgresql(
    clean_database: AsyncEngine,
) -> None:
    metrics_registry = CollectorRegistry()
    recorder = UsageRecorder(create_sessionmaker(clean_database))
    recorder.on_unstored(CompletionMetrics(metrics_registry).count_unstored)
    recorder.add(completion("req-a", api_key_id="k"))
    recorder.add(completion("req-too-many", api_key_id="k", output_tokens=2**40))  # past INTEGER
    last_month = utcnow().replace(day=1) - timedelta(days=1)
    recorder.add(completion("req-old", api_key_id="k", prompt=None, created_at=last_month))  # its budget has reset
    # Past String(32) and String(256): a backend's odd finish reason, a name no config could have.
    recorder.add(completion("req-b", api_key_id="k", finish_reason="x" * 300, model="m" * 300))
    recorder.add(completion("req-c"))
    await recorder.flush()

    assert await written(clean_database, "request_id, finish_reason, model") == [
        ("req-a", None, None),
        ("req-b", "x" * 32, "m" * 256),
        ("req-c", None, None),
    ]
    assert recorder.refused == 2
    assert recorder.pending_spend("k") == (0, 0.0)
    assert recorder.unstored_spend("k") == (2**40, 0.5)  # this month's refused record, spent all the same
    unstored = {"reason": "refused"}
    assert metrics_registry.get_sample_value("registry_usage_records_unstored_total", unstored) == 2
    assert metrics_registry.get_sample_value("registry_usage_unstored_cost_total", unstored) == 1.0


async def test_a_refused_records_spend_counts_against_the_budget_and_a_long_finish_reason_is_stored_cut(
    settings: Settings, fault: FaultServer, admin: dict[str, str], make_key: KeyFactory, clean_database: AsyncEngine
) -> None:
    backends = {"fault": backend(fault.url)}  # type: ignore[attr-defined]
    app = create_app(settings.model_copy(update={"backends": backends, "completion_usage_flush_seconds": 3600}))
    reason = ("0123456789" * 30)[:300]
    async with serve_in_process(app) as client:
        await publish(client, admin, backend="fault", model=unique("finish:300"), max_context_tokens=4096)
        app_key = await make_key(Scope.READ, name="app")
        key_id = (await client.get("/v1/keys/", headers=admin)).json()["items"][-1]["id"]
        budget = f"/v1/keys/{key_id}/budget"
        assert (await client.put(budget, json={"monthly_tokens": 25}, headers=admin)).is_success

        answer = await client.post("/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}}, headers=app_key)
        assert (answer.status_code, answer.json()["finish_reason"]) == (200, reason)  # the caller sees it whole
        # A completion of the key's whose record the database refuses (no prompt: NOT NULL), as if its backend had
        # been paid for 20 tokens that no usage report will show.
        refused = {"prompt": None, "status": "ok", "api_key_id": key_id, "input_tokens": 7, "output_tokens": 13}
        client.app.state.runtime.completions.recorder.add({**refused, "request_id": "req-refused"})
        assert (await client.get("/v1/usage", headers=admin)).status_code == 200  # writes the buffer

        assert await written(clean_database, "finish_reason, input_tokens + output_tokens") == [(reason[:32], 10)]
        assert (await client.get(budget, headers=admin)).json()["used_tokens"] == 30
        over = await client.post("/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}}, headers=app_key)
        assert (over.status_code, problem(over)["type"]) == (429, "/problems/over_budget")
        assert 'registry_usage_records_unstored_total{reason="refused"} 1.0' in (await client.get("/metrics")).text


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
