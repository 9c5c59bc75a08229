"""Migration 0015 gives every existing gate no scorers (a run scored any way counts, as before) and goes back."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from registry.db import migrate
from registry.db.engine import create_engine
from registry.evals.models import EvalGate
from registry.evals.schemas import GateOut
from registry.settings import Settings


async def gate_columns(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns("eval_gates")})


async def test_0015_leaves_existing_gates_taking_any_scoring_and_goes_down_again_on_sqlite(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", redis_url=None)
    engine = create_engine(settings)
    try:
        assert await migrate.upgrade(engine, "0014") == "0014"
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO prompts (name, description, tags, latest_version, created_at, created_by, updated_at, "
                    "updated_by, store_io) VALUES ('gated', '', '[]', 0, '2026-12-01 00:00:00', 'admin', "
                    "'2026-12-01 00:00:00', 'admin', 0)"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO eval_gates (prompt_id, state, dataset, dataset_version, min_pass_rate, no_regression, "
                    "alpha, updated_by, updated_at) SELECT id, 'production', 'cases', NULL, 0.9, 1, 0.05, 'admin', "
                    "'2026-12-01 00:00:00' FROM prompts"
                )
            )
        assert not await gate_columns(engine) & {"scorers", "pass_rule"}

        assert await migrate.upgrade(engine, "0015") == "0015"
        async with async_sessionmaker(engine)() as session:
            gate = (await session.execute(select(EvalGate))).scalar_one()
            shown = GateOut.of("gated", gate)
        assert (shown.scorers, shown.pass_rule, shown.min_pass_rate) == (None, None, 0.9)
        assert shown.scoring == "any scoring (the gate names no scorers)"

        assert await migrate.downgrade(engine, "0014") == "0014"
        assert not await gate_columns(engine) & {"scorers", "pass_rule"}
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT dataset FROM eval_gates"))).scalar_one() == "cases"
    finally:
        await engine.dispose()
