"""Rules by backend see a backend's failures behind a working fallback.

Config ``cfg`` runs on backend ``fragile`` and falls back to ``spare`` on ``steady``. A completion that failed over
is recorded once, under ``spare``; a rule by backend counts it as a failed request of ``fragile`` (the backend it
tried first) and as a request of ``steady`` (the one that served it), and as a latency sample of neither (its
record holds the whole request's time, the failed attempt's included). Rules not by backend count it once.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.alerts.conftest import PROMPT, FakeClock, complete, create_rule, evaluate, ok
from tests.completions.conftest import publish, unique
from tests.evals.conftest import dataset, finished, start_run
from tests.experiments.conftest import Client, make_experiment, make_metric

RATE = {"window_seconds": 300}


async def incident_values(client: Client, headers: dict[str, str]) -> dict[tuple[str, str], float]:
    incidents = (await ok(await client.get("/v1/alerts/incidents", headers=headers)))["items"]
    return {(i["rule"], i["subject"]): i["value"] for i in incidents}


def fired(transitions: dict[int, list[tuple[str, Any]]], rules: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """The rules that fired, by name, with the series that fired."""
    names = {rule["id"]: name for name, rule in rules.items()}
    return {names[rule_id]: sorted(s for s, t in found if t == "fire") for rule_id, found in transitions.items()}


async def publish_failing_over(client: Client, admin: dict[str, str], first: str, spare: str) -> None:
    """``spare`` on ``steady``, and ``cfg`` on ``fragile`` (prompt greet) falling back to it; ``other`` on
    ``steady`` falls back to ``spare`` too, so only the prompt's version tells which backend a completion of
    greet served by ``spare`` tried first."""
    await publish(client, admin, backend="steady", model=unique(spare), config="spare", prompt=None)
    other = {"config": "other", "prompt": None, "fallback": {"name": "spare"}}
    await publish(client, admin, backend="steady", model=unique("ok"), **other)
    await publish(client, admin, backend="fragile", model=unique(first), fallback={"name": "spare"})


async def error_rules(client: Client, admin: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {
        "by-backend": await create_rule(
            client, admin, "by-backend", "error_rate", threshold=0.5, min_count=4, group_by="backend", **RATE
        ),
        "on-fragile": await create_rule(
            client, admin, "on-fragile", "error_rate", threshold=0.5, min_count=1, scope={"backend": "fragile"}, **RATE
        ),
        "on-steady": await create_rule(
            client, admin, "on-steady", "error_rate", threshold=0.5, min_count=2, scope={"backend": "steady"}, **RATE
        ),
        "overall": await create_rule(client, admin, "overall", "error_rate", threshold=0.25, min_count=4, **RATE),
        "by-prompt": await create_rule(
            client, admin, "by-prompt", "error_rate", threshold=0.25, min_count=4, group_by="prompt", **RATE
        ),
    }


async def check_error_rates(client: Client, admin: dict[str, str]) -> None:
    """Four completions: the first two fail on fragile, the first of those on spare too; the last two fragile
    answers. Fragile: 4 requests, 2 failed; steady: 2 requests, 1 failed; overall 4 requests, 1 failed."""
    rules = await error_rules(client, admin)
    assert await complete(client, admin, 4) == [502, 200, 200, 200]

    transitions = await evaluate(client, FakeClock())

    assert fired(transitions, rules) == {
        "by-backend": ["fragile"],  # steady's 2 requests are fewer than the rule's 4
        "on-fragile": [""],
        "on-steady": [""],
        "overall": [""],
        "by-prompt": ["greet"],
    }
    assert await incident_values(client, admin) == {
        ("by-backend", "fragile"): 0.5,
        ("on-fragile", ""): 0.5,
        ("on-steady", ""): 0.5,
        ("overall", ""): 0.25,  # a failed-over completion is one request here, failed only if its fallback failed
        ("by-prompt", "greet"): 0.25,
    }


async def test_error_rate_rules_by_backend_count_a_failover_as_a_failed_request_of_the_first_backend(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    await publish_failing_over(client, admin, first="status:500:2", spare="status:500:1")
    await check_error_rates(client, admin)


async def test_a_failover_of_an_experiment_variants_config_is_a_failed_request_of_that_configs_backend(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """The variant's config ran first, not the prompt version's (both fall back to ``spare``)."""
    await publish(client, admin, backend="steady", model=unique("ok"), config="spare", prompt=None)
    await publish(client, admin, backend="steady", model=unique("ok"), fallback={"name": "spare"})
    variant = {"config": "variant", "prompt": None, "fallback": {"name": "spare"}}
    await publish(client, admin, backend="fragile", model=unique("status:500:all"), **variant)
    await make_metric(client, admin, "converted")
    await make_experiment(
        client,
        admin,
        "tone",
        PROMPT,
        variants=[
            {"key": "c", "prompt_version": 1},
            {"key": "t", "prompt_version": 1, "config": {"name": "variant", "version": 1}},
        ],
        forced_variants={"unit-t": "t"},
    )
    rule = await create_rule(client, admin, "by-backend", "error_rate", threshold=0.5, min_count=1, group_by="backend")
    body = {"variables": {"name": "Ada"}, "unit": "unit-t"}
    response = await client.post(f"/v1/prompts/{PROMPT}/complete", json=body, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["fallback_used"] is True

    assert fired(await evaluate(client, FakeClock()), {"by-backend": rule}) == {"by-backend": ["fragile"]}
    assert await incident_values(client, admin) == {("by-backend", "fragile"): 1.0}


async def test_a_failover_of_an_eval_runs_config_is_a_failed_request_of_that_configs_backend(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """A run's config is neither the prompt version's nor a variant's: the one backend falling back to ``spare``."""
    await publish(client, admin, backend="steady", model=unique("ok"), config="spare", prompt=None)
    await publish(client, admin, backend="steady", model=unique("ok"))
    chosen = {"config": "chosen", "prompt": None, "fallback": {"name": "spare"}}
    await publish(client, admin, backend="fragile", model=unique("status:500:all"), **chosen)
    rule = await create_rule(client, admin, "by-backend", "error_rate", threshold=0.5, min_count=1, group_by="backend")
    await dataset(client, admin, "cases", [{"variables": {"name": "Ada"}, "expected": "x"}])
    run = await start_run(
        client, admin, prompt=PROMPT, version=1, config={"name": "chosen", "version": 1}, dataset={"name": "cases"}
    )
    assert (await finished(client, admin, run["id"]))["status"] == "completed"

    assert fired(await evaluate(client, FakeClock()), {"by-backend": rule}) == {"by-backend": ["fragile"]}
    assert await incident_values(client, admin) == {("by-backend", "fragile"): 1.0}


async def test_a_failover_after_the_first_backend_spent_tokens_is_a_failed_request_of_it(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """An answer broken off midway: the record names its first config (``first_config``)."""
    await publish(client, admin, backend="steady", model=unique("ok"), config="spare", prompt=None)
    await publish(client, admin, backend="fragile", model=unique("reset-after:2"), fallback={"name": "spare"})
    rules = {
        "on-fragile": await create_rule(
            client, admin, "on-fragile", "error_rate", threshold=1.0, min_count=2, scope={"backend": "fragile"}, **RATE
        ),
        "by-backend": await create_rule(
            client, admin, "by-backend", "error_rate", threshold=0.5, min_count=2, group_by="backend", **RATE
        ),
    }
    assert await complete(client, admin, 2) == [200, 200]

    assert fired(await evaluate(client, FakeClock()), rules) == {"on-fragile": [""], "by-backend": ["fragile"]}
    assert await incident_values(client, admin) == {("on-fragile", ""): 1.0, ("by-backend", "fragile"): 1.0}


async def test_a_failed_over_completion_is_a_latency_sample_of_no_backend(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """Its record's latency and time to first token run from before the failed attempt: neither backend's own."""
    await publish_failing_over(client, admin, first="status:500:all", spare="ok")
    await publish(client, admin, backend="fragile", model=unique("ok"), config="direct", prompt="direct")
    rules = {
        name: await create_rule(client, admin, name, kind, threshold=0.001, min_count=count, group_by=group, **RATE)
        for name, kind, count, group in (
            ("latency-by-backend", "latency_p95", 1, "backend"),
            ("ttft-by-backend", "ttft_p95", 1, "backend"),
            ("latency-overall", "latency_p95", 3, None),
            ("ttft-overall", "ttft_p95", 3, None),
        )
    }
    rules["latency-on-steady"] = await create_rule(
        client, admin, "latency-on-steady", "latency_p95", threshold=0.001, min_count=1, scope={"backend": "steady"}
    )
    assert await complete(client, admin, 2) == [200, 200]  # both served by spare, on steady
    assert await complete(client, admin, 1, prompt="direct") == [200]  # served by fragile at once

    assert fired(await evaluate(client, FakeClock()), rules) == {
        "latency-by-backend": ["fragile"],
        "ttft-by-backend": ["fragile"],
        "latency-overall": [""],  # every completion, the failed-over ones included
        "ttft-overall": [""],
    }


async def test_the_exported_upstream_errors_count_the_first_backends_failure_behind_a_fallback(
    client: Client, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """Prometheus' backend error rate (deploy/prometheus-alerts.yml) reads attempts, so it sees them already."""
    await publish_failing_over(client, admin, first="status:500:all", spare="ok")
    assert await complete(client, admin, 2) == [200, 200]
    families = {f.name: f for f in text_string_to_metric_families((await client.get("/metrics")).text)}
    errors = {
        s.labels["backend"]: s.value for s in families["registry_upstream_errors"].samples if s.name.endswith("_total")
    }
    assert errors == {"fragile": 2.0}


async def test_rules_by_backend_count_failovers_on_sqlite(
    sqlite_client: tuple[Client, dict[str, str]],
) -> None:
    client, admin = sqlite_client
    await publish_failing_over(client, admin, first="status:500:2", spare="status:500:1")
    await check_error_rates(client, admin)
    rule = await create_rule(client, admin, "latency", "latency_p95", threshold=0.001, min_count=1, group_by="backend")
    clock = FakeClock()
    clock.advance(1)
    # Fragile answered the last two; spare's one answer came after fragile failed, so it is no sample of steady.
    assert (await evaluate(client, clock)).get(rule["id"]) == [("fragile", "fire")]
