"""The readiness report: each check's pass and its warn or fail, from the pure checks to the endpoint and command."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.auth.audit import AuditLog
from registry.auth.keys import Scope
from registry.auth.principal import Actor
from registry.cli import main
from registry.completions.models import CompletionRecord
from registry.db.engine import create_sessionmaker
from registry.operations import doctor
from registry.operations.doctor_service import DoctorService
from registry.operations.repository import BACKUP_ACTION
from registry.settings import BackendSettings, Settings
from tests.conftest import AppClient, KeyFactory, problem
from tests.experiments.conftest import make_prompt

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def key(*, admin: bool, days_idle: int, expires: bool = True) -> doctor.KeyFacts:
    used = NOW - timedelta(days=days_idle)
    return doctor.KeyFacts(
        "abc", "app", admin, used - timedelta(days=1), NOW + timedelta(days=1) if expires else None, used
    )


@pytest.mark.parametrize(
    ("check", "status"),
    [
        (doctor.migrations("0011", "0011"), "pass"),
        (doctor.migrations("0010", "0011"), "fail"),
        (doctor.backends({"local": None}), "pass"),
        (doctor.backends({"local": None, "big": "ConnectError"}), "fail"),
        (doctor.backends({}), "warn"),
        (doctor.redis(True, None), "pass"),
        (doctor.redis(True, "TimeoutError"), "fail"),
        (doctor.redis(False, None), "warn"),
        (doctor.replicas("api", 1), "pass"),
        (doctor.replicas("all", 4), "pass"),
        (doctor.replicas("all", 1), "warn"),
        (doctor.keys([key(admin=True, days_idle=10)], NOW)[0], "pass"),
        (doctor.keys([key(admin=True, days_idle=91)], NOW)[0], "fail"),
        (doctor.keys([key(admin=False, days_idle=200)], NOW)[0], "pass"),
        (doctor.keys([key(admin=False, days_idle=1)], NOW)[1], "pass"),
        (doctor.keys([key(admin=False, days_idle=1, expires=False)], NOW)[1], "warn"),
        (doctor.gates([]), "pass"),
        (doctor.gates(["greet"]), "warn"),
        (doctor.retention(30, 2, 0), "pass"),
        (doctor.retention(30, 2, 5), "fail"),
        (doctor.backups(NOW - timedelta(hours=3), NOW, 26), "pass"),
        (doctor.backups(NOW - timedelta(hours=30), NOW, 26), "fail"),
        (doctor.backups(None, NOW, 26), "fail"),
        (doctor.bootstrap(False), "pass"),
        (doctor.bootstrap(True), "fail"),
    ],
    ids=lambda value: value if isinstance(value, str) else f"{value.name}:{value.reason[:40]}",
)
def test_each_check_passes_warns_or_fails_with_its_reason(check: doctor.Check, status: str) -> None:
    assert check.status == status
    assert check.reason


def test_the_report_is_as_bad_as_its_worst_check() -> None:
    assert doctor.overall([doctor.bootstrap(False)]) == "pass"
    assert doctor.overall([doctor.bootstrap(False), doctor.gates(["x"])]) == "warn"
    assert doctor.overall([doctor.gates(["x"]), doctor.bootstrap(True)]) == "fail"


async def report(
    engine: AsyncEngine,
    settings: Settings,
    *,
    now: datetime | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, doctor.Check]:
    async with create_sessionmaker(engine)() as session:
        checks = await DoctorService(session, settings, None, transport=transport).run(now)
    return {c.name: c for c in checks}


async def test_the_endpoint_reports_gates_backups_and_keys_from_the_database(
    client: AppClient, admin: dict[str, str], make_key: KeyFactory, clean_database: AsyncEngine
) -> None:
    reader = await make_key(Scope.READ, name="reader")
    assert problem(await client.get("/v1/admin/doctor", headers=reader))["status"] == 403
    await make_prompt(client, admin, "greet")
    body = (await client.get("/v1/admin/doctor", headers=admin)).json()
    checks = {c["name"]: c for c in body["checks"]}
    assert body["status"] == "fail"
    assert checks["migrations"]["status"] == "pass"
    assert checks["redis"]["status"] == "pass"
    assert checks["admin_key_bootstrap"]["status"] == "pass"
    assert checks["admin_keys"]["status"] == "pass"
    assert checks["key_expiry"]["status"] == "warn"
    assert (checks["evaluation_gates"]["status"], checks["evaluation_gates"]["reason"]) == (
        "warn",
        "production prompts without a production evaluation gate: greet",
    )
    assert checks["backups"]["status"] == "fail"

    await client.post("/v1/evals/datasets", json={"name": "cases"}, headers=admin)
    await client.post("/v1/evals/datasets/cases/versions", json={"items": [{"variables": {"x": "a"}}]}, headers=admin)
    gate = await client.put(
        "/v1/prompts/greet/gates/production", json={"dataset": {"name": "cases"}, "min_pass_rate": 0.5}, headers=admin
    )
    assert gate.status_code == 200, gate.text
    async with create_sessionmaker(clean_database)() as session, session.begin():
        await AuditLog(session).record(Actor(name="cli:ops"), BACKUP_ACTION, "backup", "b.tar.gz")
    checks = {c["name"]: c for c in (await client.get("/v1/admin/doctor", headers=admin)).json()["checks"]}
    assert checks["evaluation_gates"]["status"] == "pass"
    assert checks["backups"]["status"] == "pass"


async def test_an_admin_key_idle_for_ninety_days_fails(
    admin: dict[str, str], settings: Settings, clean_database: AsyncEngine
) -> None:
    assert (await report(clean_database, settings))["admin_keys"].status == "pass"
    later = datetime.now(UTC) + timedelta(days=91)
    checks = await report(clean_database, settings, now=later)
    assert checks["admin_keys"].status == "fail"
    assert "(admin)" in checks["admin_keys"].reason


async def test_stored_texts_past_their_retention_fail(settings: Settings, clean_database: AsyncEngine) -> None:
    assert (await report(clean_database, settings))["retention"].status == "pass"
    async with create_sessionmaker(clean_database)() as session, session.begin():
        session.add(
            CompletionRecord(
                prompt="greet", status="ok", prompt_text="hi", created_at=datetime.now(UTC) - timedelta(days=40)
            )
        )
    checks = await report(clean_database, settings)
    assert checks["retention"].status == "fail"
    assert checks["retention"].reason.startswith("1 stored completion texts are older than the retention of 30 days")


async def test_backends_are_asked_for_their_models(settings: Settings, clean_database: AsyncEngine) -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.host == "down":
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200 if request.url.host == "up" else 500, json={"data": []})

    backends = {name: BackendSettings(url=f"http://{name}:8000") for name in ("up", "down", "broken")}
    checks = await report(
        clean_database, settings.model_copy(update={"backends": backends}), transport=httpx.MockTransport(answer)
    )
    assert sorted(asked) == [f"http://{n}:8000/v1/models" for n in ("broken", "down", "up")]
    assert checks["backends"].status == "fail"
    assert checks["backends"].reason == (
        "2 of 3 backends unreachable (broken: GET /v1/models answered 500; down: ConnectError: connection refused)"
    )
    only_up = settings.model_copy(update={"backends": {"up": backends["up"]}})
    assert (await report(clean_database, only_up, transport=httpx.MockTransport(answer)))["backends"].status == "pass"


async def test_an_unreachable_redis_fails(settings: Settings, clean_database: AsyncEngine) -> None:
    from registry.lib.redis import create_redis

    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    redis = create_redis(broken)
    try:
        async with create_sessionmaker(clean_database)() as session:
            checks = {c.name: c for c in await DoctorService(session, broken, redis).run()}
    finally:
        assert redis is not None
        await redis.aclose()
    assert checks["redis"].status == "fail"


def test_the_command_exits_non_zero_on_a_failure_and_prints_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"REGISTRY_DATABASE_URL": "sqlite+aiosqlite:///./r.db", "REGISTRY_REDIS_URL": ""}
    runner = CliRunner()
    assert runner.invoke(main, ["migrate"], env=env).exit_code == 0
    result = runner.invoke(main, ["doctor", "--json"], env=env)
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["status"] == "fail"
    assert {c["name"]: c["status"] for c in body["checks"]}["admin_key_bootstrap"] == "fail"
    assert runner.invoke(main, ["backup", "b.tar.gz"], env=env).exit_code == 0
    calm = runner.invoke(main, ["doctor"], env={**env, "REGISTRY_BOOTSTRAP_ADMIN_KEY": "false"})
    assert calm.exit_code == 0, calm.output
    assert "pass    backups" in calm.stdout
