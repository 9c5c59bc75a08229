"""A NUL (U+0000), which PostgreSQL text and JSON cannot hold: stored as U+FFFD in what a run writes from the model's
answer (it cannot be refused), refused by name in a dataset's items (the caller's own cases, which can be).

An answer holding one used to fail the whole run ("evaluation run failed"); an item holding one failed its upload.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.db.base import utcnow
from registry.db.engine import create_sessionmaker
from registry.evals.models import EvalDataset, EvalDatasetVersion, EvalRun, EvalRunItem
from registry.evals.repository import EvalRepository
from tests.conftest import AppClient, count_rows, problem
from tests.evals.conftest import answers, dataset, finished, publish, start_run

REPLACED = "\ufffd"


async def test_a_run_whose_model_answers_with_a_nul_completes_and_stores_it_as_the_replacement_character(
    evals: AppClient, admin: dict[str, str]
) -> None:
    # The stand-in answers the rendered prompt, whose template ends with a NUL.
    version = await publish(evals, admin, "nul-answer", template='{{ answer }}{{ "\\x00" }}')
    await dataset(evals, admin, "nul-answer-cases", answers(("yes", "yes"), ("no", "yes")))
    run = await start_run(
        evals,
        admin,
        prompt="nul-answer",
        version=version,
        dataset={"name": "nul-answer-cases"},
        scorers=[{"kind": "contains", "values": ["yes"]}],
    )

    done = await finished(evals, admin, run["id"])
    page = (await evals.get(f"/v1/evals/runs/{run['id']}/items", headers=admin)).json()

    assert done["status"] == "completed", done
    assert (done["items_done"], done["items_passed"], done["error"]) == (2, 1, None)
    assert [(item["output"], item["passed"]) for item in page["items"]] == [
        (f"yes{REPLACED}", True),
        (f"no{REPLACED}", False),
    ]


async def new_run(engine: AsyncEngine, lease: str) -> int:
    """A running run held by ``lease``, on a dataset version of one item."""
    async with create_sessionmaker(engine)() as session, session.begin():
        repository = EvalRepository(session)
        data = EvalDataset(name="nul-outcomes", created_by="t", updated_by="t")
        await repository.add(data)
        version = EvalDatasetVersion(
            dataset_id=data.id, number=1, item_count=1, content_sha256="0" * 64, created_by="t"
        )
        await repository.add(version)
        run = EvalRun(
            prompt="p",
            prompt_version=1,
            config="c",
            config_version=1,
            dataset_version_id=version.id,
            dataset="nul-outcomes",
            dataset_version=1,
            scorers=[],
            pass_rule=None,
            concurrency=1,
            status="running",
            total_items=1,
            created_by="t",
            lease_owner=lease,
            lease_expires_at=utcnow(),
        )
        await repository.add(run)
        return run.id


def outcome(position: int, **fields: Any) -> dict[str, Any]:
    return {
        "position": position,
        "status": "scored",
        "output": "ok",
        "scores": [],
        "score": 1.0,
        "passed": True,
        "error": None,
        "latency_ms": 1.0,
        "input_tokens": 1,
        "output_tokens": 1,
        "cost": 0.0,
        "cached": False,
        "fallback_used": False,
        "created_at": utcnow(),
        **fields,
    }


async def test_an_outcomes_text_and_a_runs_error_holding_a_nul_are_stored_with_the_replacement_character(
    migrated_engine: AsyncEngine,
) -> None:
    run_id = await new_run(migrated_engine, "lease-1")
    judged = [{"name": "judge", "kind": "judge", "reason": "said a\x00b", "judge": {"k\x00": ["v\x00"]}}]
    rows = [
        outcome(1, output="bad\x00answer", scores=judged),
        outcome(2, status="error", output=None, passed=False, error="upstream: a\x00b"),
    ]

    async with create_sessionmaker(migrated_engine)() as session, session.begin():
        stored = await EvalRepository(session).record_items(run_id, "lease-1", rows)
    async with create_sessionmaker(migrated_engine)() as session, session.begin():
        failed = await EvalRepository(session).renew(run_id, "lease-1", utcnow(), status="failed", error="x\x00y")
        items = (await session.scalars(select(EvalRunItem).order_by(EvalRunItem.position))).all()
        outputs = [(item.output, item.scores, item.error) for item in items]
    async with migrated_engine.connect() as connection:
        error = (await connection.execute(text("SELECT error FROM eval_runs"))).scalar_one()

    assert stored == 2
    assert failed
    assert outputs == [
        (
            f"bad{REPLACED}answer",
            [{**judged[0], "reason": f"said a{REPLACED}b", "judge": {f"k{REPLACED}": [f"v{REPLACED}"]}}],
            None,
        ),
        (None, [], f"upstream: a{REPLACED}b"),
    ]
    assert rows[0]["output"] == "bad\x00answer"  # the caller's rows are left as they were
    assert error == f"x{REPLACED}y"


NUL_ITEMS = {
    "a variable": ({"variables": {"name": "A\x00da"}}, "variables.name"),
    "a nested variable": ({"variables": {"names": ["Ada", {"first": "A\x00"}]}}, "variables.names[1].first"),
    "a variable's name": ({"variables": {"na\x00me": "Ada"}}, "variables key 'na\\x00me'"),
    "the expected output": ({"variables": {}, "expected": "Hello\x00"}, "expected"),
    "the metadata": ({"variables": {}, "metadata": {"source": "\x00"}}, "metadata.source"),
}


@pytest.mark.parametrize(("item", "where"), NUL_ITEMS.values(), ids=NUL_ITEMS.keys())
async def test_a_dataset_item_holding_a_nul_is_refused_naming_the_item_and_field(
    client: AppClient, admin: dict[str, str], clean_database: AsyncEngine, item: dict[str, Any], where: str
) -> None:
    created = await client.post("/v1/evals/datasets", json={"name": "nul-items"}, headers=admin)
    assert created.status_code == 201, created.text
    items = [{"variables": {"name": "Grace"}}, item]

    response = await client.post("/v1/evals/datasets/nul-items/versions", json={"items": items}, headers=admin)

    body = problem(response)
    assert response.status_code == 422, response.text
    assert f"{where} holds a NUL (U+0000)" in body["detail"]
    assert "$.items[1]" in body["detail"]
    assert await count_rows(clean_database, "eval_dataset_versions") == 0


async def test_a_jsonl_or_csv_line_holding_a_nul_is_refused_naming_the_line_and_field(
    client: AppClient, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    created = await client.post("/v1/evals/datasets", json={"name": "nul-files"}, headers=admin)
    assert created.status_code == 201, created.text
    jsonl = "\n".join(json.dumps(item) for item in [{"variables": {"name": "Ada"}}, {"variables": {"name": "A\x00"}}])
    csv = "name,expected\nAda,Hello Ada\nGrace,Hello\x00\n"

    from_jsonl = await client.post(
        "/v1/evals/datasets/nul-files/versions",
        content=jsonl,
        headers={**admin, "content-type": "application/x-ndjson"},
    )
    from_csv = await client.post(
        "/v1/evals/datasets/nul-files/versions", content=csv, headers={**admin, "content-type": "text/csv"}
    )

    assert (from_jsonl.status_code, from_csv.status_code) == (422, 422)
    [jsonl_error] = problem(from_jsonl)["errors"]
    [csv_error] = problem(from_csv)["errors"]
    assert jsonl_error["field"] == "line 2"
    assert "variables.name holds a NUL (U+0000)" in jsonl_error["message"]
    assert csv_error["field"] == "row 3"
    assert "expected holds a NUL (U+0000)" in csv_error["message"]
    assert await count_rows(clean_database, "eval_dataset_items") == 0
