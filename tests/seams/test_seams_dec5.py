"""Features combined as a demanding app combines them, through both completion doors and both paths.

An experiment whose variants run with their own configs (one failing over to its fallback), a key with a
budget, the exact cache, labels and version numbers, promotions while answers are cached: each test checks
what both doors answer, with the fast path in front of Litestar and without, and what is recorded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import HeldBackend, backend, held, parse_sse, unique  # noqa: F401 - held: a fixture
from tests.completions.fault_server import FaultServer
from tests.conftest import openai_problem, problem
from tests.seams.conftest import Served, eventually, ok, rows, started_experiment

COMPLETE = "/v1/prompts/greet/complete"
CHAT = "/v1/chat/completions"
ADA = {"name": "Ada"}
# Prices per million tokens (input, output) of each config, so each record's cost names the config that ran.
PRICES = {"main": (1000.0, 2000.0), "spare": (30000.0, 50000.0), "big": (7.0, 9.0), "main v2": (400.0, 600.0)}


@pytest.fixture(params=[True, False], ids=["fast-path", "litestar"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def config(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    name: str,
    *,
    create: bool = True,
    prices: tuple[float, float] | None = None,
    **version: Any,
) -> int:
    """A version of config ``name`` (at its PRICES unless ``prices``, temperature 0), promoted to production;
    its number."""
    if create:
        await ok(await client.post("/v1/configs", json={"name": name}, headers=admin))
    prices = prices or PRICES.get(name, PRICES["main"])
    body = {
        "params": {"temperature": 0, "max_tokens": 8},
        "input_price_per_mtok": prices[0],
        "output_price_per_mtok": prices[1],
        **version,
    }
    created = await ok(await client.post(f"/v1/configs/{name}/versions", json=body, headers=admin))
    number: int = created["version"]
    promote = {"to": "production", "expected_current": None if number == 1 else number - 1}
    await ok(await client.post(f"/v1/configs/{name}/versions/{number}/promote", json=promote, headers=admin))
    return number


async def prompt(client: httpx.AsyncClient, admin: dict[str, str], *templates: str, config: str = "main") -> None:
    """greet with a chat version per template, all on ``config`` version 1; version 1 in production."""
    await ok(await client.post("/v1/prompts", json={"name": "greet"}, headers=admin))
    for template in templates:
        version = {"kind": "chat", "messages": [{"role": "user", "content": template}], "config": {"name": config}}
        await ok(await client.post("/v1/prompts/greet/versions", json=version, headers=admin))
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post("/v1/prompts/greet/versions/1/promote", json=promote, headers=admin))


def cost_at(config: str, input_tokens: int, output_tokens: int) -> float:
    price_in, price_out = PRICES[config]
    return (input_tokens * price_in + output_tokens * price_out) / 1_000_000


async def one_unit_per_side(client: httpx.AsyncClient, admin: dict[str, str], experiment: str) -> dict[str, str]:
    """A unit the experiment routes to each of its variants (by preview, which records nothing).

    The units are this test's own: an erasure refuses its unit's exact-cache writes for an hour in the Redis the
    whole run shares, so a unit another test erased (``user-0``, in tests/experiments/test_completion_metrics.py)
    would find no cached answer here."""
    units: dict[str, str] = {}
    prefix = unique("user").replace("/", "-")
    for i in range(60):
        unit = f"{prefix}-{i}"
        body = {"unit": unit, "variables": ADA}
        preview = await ok(await client.post(f"/v1/experiments/{experiment}/preview", json=body, headers=admin))
        units.setdefault(preview["experiment"]["variant"], unit)
    return units


async def key_with_budget(
    client: httpx.AsyncClient, admin: dict[str, str], scopes: list[str], **budget: Any
) -> tuple[str, dict[str, str]]:
    created = await ok(
        await client.post("/v1/keys", json={"name": unique("app").replace("/", "-"), "scopes": scopes}, headers=admin)
    )
    if budget:
        await ok(await client.put(f"/v1/keys/{created['api_key']['id']}/budget", json=budget, headers=admin))
    return str(created["api_key"]["id"]), {"Authorization": f"Bearer {created['key']}"}


async def until_routed(client: httpx.AsyncClient, admin: dict[str, str], unit: str) -> None:
    """Wait until the server's router (on its own loop) routes ``unit``; renders record no usage."""

    async def routed() -> bool:
        render = {"variables": ADA, "unit": unit}
        answer = await ok(await client.post("/v1/prompts/greet/render", json=render, headers=admin))
        return answer["experiment"] is not None

    await eventually(routed, "the experiment to route")


def requests(unit: str, max_tokens: int) -> list[tuple[str, dict[str, Any]]]:
    """The same request through /complete and the OpenAI door, whole and streamed."""
    door = {"model": "prompt:greet", "messages": [], "variables": ADA, "user": unit}
    return [
        (COMPLETE, {"variables": ADA, "unit": unit, "max_tokens": max_tokens}),
        (CHAT, {**door, "max_tokens": max_tokens}),
        (CHAT, {**door, "max_completion_tokens": max_tokens, "stream": True}),
    ]


def door_chunks(raw: str) -> list[dict[str, Any]]:
    assert raw.rstrip().endswith("data: [DONE]"), raw
    return [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]


async def cached_on_held(
    served: Served, admin: dict[str, str], stand_in: HeldBackend, fast_path: bool, *templates: str
) -> httpx.AsyncClient:
    """The registry with the exact cache on and ``stand_in`` as backend ``held``: config ``main`` on it, and
    ``greet`` with a version per template, keeping its inputs and outputs (so its answers are cached)."""
    backends = {"held": backend(stand_in.url)}
    client = await served(fast_path=fast_path, completion_cache_ttl_seconds=60.0, backends=backends)
    await config(client, admin, "main", backend="held", model=unique("ok"))
    await prompt(client, admin, *templates)
    await ok(await client.patch("/v1/prompts/greet", json={"store_io": True}, headers=admin))
    return client


async def stream_held_at_the_backend(
    client: httpx.AsyncClient, stand_in: HeldBackend, headers: dict[str, str]
) -> asyncio.Task[tuple[httpx.Headers, list[dict[str, Any]]]]:
    """A stream of ``greet`` through the door, once it has reached ``stand_in``; it ends with the response's
    headers and chunks, a 200, when ``stand_in`` is released."""

    async def stream_through_the_door() -> tuple[httpx.Headers, list[dict[str, Any]]]:
        body = {"model": "prompt:greet", "messages": [], "variables": ADA, "stream": True}
        async with client.stream("POST", CHAT, json=body, headers=headers) as response:
            assert response.status_code == 200
            return response.headers, door_chunks((await response.aread()).decode())

    in_flight = asyncio.create_task(stream_through_the_door())

    async def arrived() -> bool:
        return stand_in.arrived.is_set()

    await eventually(arrived, "the stream to reach the backend")
    return in_flight


async def facts_of_every_way(client: httpx.AsyncClient, headers: dict[str, str], unit: str) -> list[dict[str, Any]]:
    """The same request four ways (door and /complete, whole and streamed): what each says ran, and its cost."""
    answers: list[dict[str, Any]] = []
    door = await client.post(
        CHAT, json={"model": "prompt:greet", "messages": [], "user": unit, "variables": ADA}, headers=headers
    )
    assert door.status_code == 200, door.text
    facts = door.json()["registry"]
    seen = door.headers
    assert seen["x-registry-prompt"] == "greet"
    assert seen["x-registry-prompt-version"] == str(facts["version"])
    assert (seen["x-registry-config"], seen["x-registry-config-version"]) == (
        facts["config"]["name"],
        str(facts["config"]["version"]),
    )
    assert (seen["x-registry-experiment"], seen["x-registry-variant"]) == (
        facts["experiment"]["key"],
        facts["experiment"]["variant"],
    )
    assert seen["x-registry-fallback-used"] == json.dumps(facts["fallback_used"])
    assert float(seen["x-registry-cost"]) == pytest.approx(facts["cost"])
    answers.append({**facts, "way": "door"})

    body = {
        "model": "prompt:greet",
        "messages": [],
        "unit": unit,
        "variables": ADA,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream("POST", CHAT, json=body, headers=headers) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["x-registry-variant"] == facts["experiment"]["variant"]
        chunks = door_chunks((await streamed.aread()).decode())
    # The facts ride on the finish chunk; with include_usage the usage chunk follows it.
    [finish] = [chunk for chunk in chunks if "registry" in chunk]
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    answers.append({**finish["registry"], "way": "door stream"})

    whole = await ok(await client.post(COMPLETE, json={"variables": ADA, "unit": unit}, headers=headers))
    answers.append({**whole, "way": "complete"})

    async with client.stream(
        "POST", COMPLETE, json={"variables": ADA, "unit": unit, "stream": True}, headers=headers
    ) as streamed:
        assert streamed.status_code == 200
        events = parse_sse((await streamed.aread()).decode())
    assert events[0][0] == "metadata", events
    assert events[-1][0] == "done", events
    answers.append({**events[0][1], "cost": events[-1][1]["cost"], "way": "complete stream"})
    return answers


async def test_variants_with_their_own_configs_answer_record_and_charge_alike_four_ways(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine, fast_path: bool
) -> None:
    client = await served(fast_path=fast_path, experiment_exposure_flush_seconds=0.05)
    await config(client, admin, "main", backend="fault", model=unique("ok"))
    await config(client, admin, "spare", backend="fault", model=unique("ok"))
    await config(client, admin, "big", backend="flaky", model=unique("status:500:all"), fallback={"name": "spare"})
    await prompt(client, admin, "Say hello to {{ name }}.", "Greet {{ name }}.")
    await started_experiment(client, admin, "sizes", {"name": "big", "version": 1})
    units = await one_unit_per_side(client, admin, "sizes")
    assert set(units) == {"control", "treatment"}
    key_id, app = await key_with_budget(client, admin, ["read"], monthly_cost=10.0)

    await until_routed(client, admin, units["control"])
    expected = {"control": (1, "main", False), "treatment": (2, "spare", True)}
    for side, unit in units.items():
        for answer in await facts_of_every_way(client, app, unit):
            assert answer["experiment"] == {"key": "sizes", "phase": 1, "variant": side, "in_experiment": True}, answer
            version, config_name, fallback = expected[side]
            assert (answer["version"], answer["config"]["name"], answer["config"]["version"]) == (
                version,
                config_name,
                1,
            ), answer
            assert answer["fallback_used"] is fallback, answer
            assert answer["cost"] == pytest.approx(cost_at(config_name, 7, 3)), answer

    await ok(await client.get("/v1/usage", headers=admin))
    recorded = await rows(
        clean_database,
        "SELECT unit, variant, prompt_version, config, config_version, fallback_used, stream, status, "
        "input_tokens, output_tokens, cost, api_key_id FROM completions ORDER BY id",
    )
    assert len(recorded) == 8
    for row in recorded:
        version, config_name, fallback = expected[row["variant"]]
        assert row["unit"] == units[row["variant"]]
        assert (row["prompt_version"], row["config"], row["config_version"]) == (version, config_name, 1), row
        assert (row["fallback_used"], row["status"], row["api_key_id"]) == (fallback, "ok", key_id), row
        assert row["cost"] == pytest.approx(cost_at(config_name, row["input_tokens"], row["output_tokens"])), row
    assert [r["stream"] for r in recorded] == [False, True, False, True] * 2
    spend = await ok(await client.get(f"/v1/keys/{key_id}/budget", headers=admin))
    assert spend["used_cost"] == pytest.approx(sum(r["cost"] for r in recorded))
    assert spend["used_tokens"] == sum(r["input_tokens"] + r["output_tokens"] for r in recorded)
    usage = await ok(
        await client.get("/v1/usage", params=[("group_by", "variant"), ("group_by", "config")], headers=admin)
    )
    by_variant = {(item["variant"], item["config"]): item for item in usage["items"]}
    assert set(by_variant) == {("control", "main"), ("treatment", "spare")}
    assert by_variant["treatment", "spare"]["fallbacks"] == 4

    async def exposed_once() -> bool:
        shown = [await ok(await client.get(f"/v1/units/{unit}", headers=admin)) for unit in units.values()]
        return all(len(s["exposures"]) == 1 and not s["pending_exposures"] for s in shown)

    await eventually(exposed_once, "one exposure per unit, written, whichever way it came")


async def test_only_production_traffic_is_routed_and_a_variants_cached_answer_stays_with_its_config(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine, fast_path: bool
) -> None:
    """Treatment runs version 2 with main's version 2, which asks the backend exactly what version 1 does and
    differs only in its prices: the exact cache must still keep its answers apart from version 2's own config."""
    client = await served(
        fast_path=fast_path, completion_cache_ttl_seconds=60.0, experiment_exposure_flush_seconds=0.05
    )
    model = unique("ok")
    await config(client, admin, "main", backend="fault", model=model)
    await prompt(client, admin, "Say hello to {{ name }}.", "Greet {{ name }}.")
    await ok(await client.patch("/v1/prompts/greet", json={"store_io": True}, headers=admin))
    await config(client, admin, "main", create=False, prices=PRICES["main v2"], backend="fault", model=model)
    promote = {"to": "staging", "expected_current": None}
    await ok(await client.post("/v1/prompts/greet/versions/2/promote", json=promote, headers=admin))
    await started_experiment(client, admin, "prices", {"name": "main", "version": 2})
    unit = (await one_unit_per_side(client, admin, "prices"))["treatment"]

    async def door(model_name: str) -> dict[str, Any]:
        body = {"model": model_name, "messages": [], "user": unit, "variables": ADA}
        answer = await client.post(CHAT, json=body, headers=admin)
        assert answer.status_code == 200, answer.text
        facts: dict[str, Any] = answer.json()["registry"]
        assert answer.headers.get("x-registry-variant") == (facts["experiment"] or {}).get("variant")
        return facts

    await until_routed(client, admin, unit)
    first = await door("prompt:greet")
    assert (first["experiment"]["variant"], first["config"]["version"], first["cached"]) == ("treatment", 2, False)
    routed_answer = await door("prompt:greet@production")
    assert routed_answer["experiment"]["variant"] == "treatment"
    assert (routed_answer["version"], routed_answer["config"]["version"], routed_answer["cached"]) == (2, 2, True)
    treatment_cost = cost_at("main v2", 7, 3)
    for model_name in ("prompt:greet@staging", "prompt:greet@2", "prompt:greet@latest"):
        facts = await door(model_name)
        assert facts["experiment"] is None, (model_name, facts)  # an explicit label or version is not routed
        assert (facts["version"], facts["config"]["name"], facts["config"]["version"]) == (2, "main", 1), facts
        # The first answers from the backend at version 1's prices, never from the treatment's cached answer.
        assert facts["cached"] is (model_name != "prompt:greet@staging"), (model_name, facts)
        assert facts["cost"] == (pytest.approx(cost_at("main", 7, 3)) if not facts["cached"] else 0.0)
    whole = await ok(await client.post(COMPLETE, json={"variables": ADA, "unit": unit, "version": 2}, headers=admin))
    assert (whole["experiment"], whole["config"]["version"], whole["cached"]) == (None, 1, True)

    await ok(await client.get("/v1/usage", headers=admin))
    recorded = await rows(
        clean_database,
        "SELECT variant, prompt_version, config_version, cached, cost FROM completions WHERE NOT cached ORDER BY id",
    )
    assert recorded == [
        {
            "variant": "treatment",
            "prompt_version": 2,
            "config_version": 2,
            "cached": False,
            "cost": pytest.approx(treatment_cost),
        },
        {
            "variant": None,
            "prompt_version": 2,
            "config_version": 1,
            "cached": False,
            "cost": pytest.approx(cost_at("main", 7, 3)),
        },
    ]

    async def exposed_once() -> bool:
        shown = await ok(await client.get(f"/v1/units/{unit}", headers=admin))
        return len(shown["exposures"]) == 1 and not shown["pending_exposures"]

    await eventually(exposed_once, "one exposure: the explicit label and version calls expose no one")


async def test_a_stream_in_flight_across_a_promotion_keeps_its_version_and_its_cached_answer_returns_on_rollback(
    served: Served,
    admin: dict[str, str],
    clean_database: AsyncEngine,
    held: HeldBackend,  # noqa: F811 - the fixture
    fast_path: bool,
) -> None:
    client = await cached_on_held(served, admin, held, fast_path, "Say hello to {{ name }}.", "Greet {{ name }}.")
    in_flight = await stream_held_at_the_backend(client, held, admin)
    promote = {"to": "production", "expected_current": 1}
    await ok(await client.post("/v1/prompts/greet/versions/2/promote", json=promote, headers=admin))
    held.release.set()
    headers, chunks = await in_flight
    assert headers["x-registry-prompt-version"] == "1"
    [finish] = [chunk for chunk in chunks if "registry" in chunk]
    assert (finish["registry"]["version"], finish["registry"]["cached"]) == (1, False)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])

    after = await ok(await client.post(COMPLETE, json={"variables": ADA}, headers=admin))
    assert (after["version"], after["cached"]) == (2, False)  # version 1's answer is not version 2's
    await ok(await client.post("/v1/prompts/greet/rollback", json={"reason": "v2 is worse"}, headers=admin))
    again = await ok(await client.post(COMPLETE, json={"variables": ADA}, headers=admin))
    assert (again["version"], again["cached"], again["text"], again["cost"]) == (1, True, text, 0.0)

    await ok(await client.get("/v1/usage", headers=admin))
    recorded = await rows(clean_database, "SELECT prompt_version, stream, cached, status FROM completions ORDER BY id")
    assert [(r["prompt_version"], r["stream"], r["cached"], r["status"]) for r in recorded] == [
        (1, True, False, "ok"),
        (2, False, False, "ok"),
        (1, False, True, "ok"),
    ]


async def test_a_budget_set_while_a_stream_runs_is_used_up_by_it_and_then_refuses_every_way_even_a_cached_answer(
    served: Served,
    admin: dict[str, str],
    clean_database: AsyncEngine,
    held: HeldBackend,  # noqa: F811 - the fixture
    fast_path: bool,
) -> None:
    client = await cached_on_held(served, admin, held, fast_path, "Say hello to {{ name }}.")
    key_id, app = await key_with_budget(client, admin, ["read"])
    in_flight = await stream_held_at_the_backend(client, held, app)
    # 7 + 3 tokens: the stream now running uses it up exactly; it is not cut short for it.
    await ok(await client.put(f"/v1/keys/{key_id}/budget", json={"monthly_tokens": 10}, headers=admin))
    held.release.set()
    _, chunks = await in_flight
    [finish] = [chunk for chunk in chunks if "registry" in chunk]
    assert finish["choices"][0]["finish_reason"] == "stop"
    spend = await ok(await client.get(f"/v1/keys/{key_id}/budget", headers=admin))
    assert spend["used_tokens"] == 10

    # The same request is in the exact cache now: a hit would cost nothing, but the key is refused first.
    door = {"model": "prompt:greet", "messages": [], "variables": ADA}
    refusals = [
        await client.post(CHAT, json=door, headers=app),
        await client.post(CHAT, json={**door, "stream": True}, headers=app),
        await client.post(COMPLETE, json={"variables": ADA}, headers=app),
        await client.post(COMPLETE, json={"variables": ADA, "stream": True}, headers=app),
    ]
    for refused in refusals[:2]:
        assert refused.status_code == 429, refused.text
        assert openai_problem(refused)["type"] == "/problems/over_budget"
        assert "used 10 of its 10 tokens" in refused.json()["error"]["message"]
    for refused in refusals[2:]:
        assert refused.status_code == 429, refused.text
        assert problem(refused)["type"] == "/problems/over_budget"
    assert all(int(refused.headers["retry-after"]) > 0 for refused in refusals)
    cached = await ok(await client.post(COMPLETE, json={"variables": ADA}, headers=admin))
    assert cached["cached"] is True  # it was there to be served, to a key with room

    await ok(await client.get("/v1/usage", headers=admin))
    recorded = await rows(
        clean_database, "SELECT api_key_id, stream, cached, input_tokens, output_tokens FROM completions ORDER BY id"
    )
    assert recorded == [
        {"api_key_id": key_id, "stream": True, "cached": False, "input_tokens": 7, "output_tokens": 3},
        {
            "api_key_id": recorded[1]["api_key_id"],
            "stream": False,
            "cached": True,
            "input_tokens": 0,
            "output_tokens": 0,
        },
    ]
    assert recorded[1]["api_key_id"] != key_id


async def test_a_lowered_max_tokens_is_checked_against_the_addressed_config_and_capped_by_the_variants_and_fallbacks(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine, fault: FaultServer, fast_path: bool
) -> None:
    client = await served(fast_path=fast_path)
    main, small, spare = unique("ok"), unique("status:500:all"), unique("ok")
    await config(client, admin, "main", backend="fault", model=main)
    await config(client, admin, "spare", backend="fault", model=spare, params={"temperature": 0, "max_tokens": 3})
    small_params = {"temperature": 0, "max_tokens": 5}
    await config(client, admin, "small", backend="flaky", model=small, params=small_params, fallback={"name": "spare"})
    await prompt(client, admin, "Say hello to {{ name }}.", "Greet {{ name }}.")
    await started_experiment(client, admin, "lengths", {"name": "small", "version": 1})
    units = await one_unit_per_side(client, admin, "lengths")
    await until_routed(client, admin, units["control"])

    # 6 is below the addressed version's config's 8: every arm answers, the treatment's config (5) and its
    # fallback (3) asking their backends for no more than their own limits, as a fallback's lower limit does.
    for unit in (units["treatment"], units["control"]):
        for path, body in requests(unit, 6):
            answered = await client.post(path, json=body, headers=admin)
            assert answered.status_code == 200, answered.text
    # 9 is above the addressed version's config's 8: refused in every arm.
    for unit in (units["treatment"], units["control"]):
        for path, body in requests(unit, 9):
            refused = await client.post(path, json=body, headers=admin)
            assert refused.status_code == 422, refused.text
            found = problem(refused) if path == COMPLETE else openai_problem(refused)
            assert [(e["field"], e["message"]) for e in found["errors"]] == [
                ("max_tokens", "may only lower the config's max_tokens (8)")
            ]
    assert [r.payload["max_tokens"] for r in fault.seen(main, "/v1/chat/completions")] == [6, 6, 6]
    assert [r.payload["max_tokens"] for r in fault.seen(small, "/v1/chat/completions")] == [5, 5, 5]
    assert [r.payload["max_tokens"] for r in fault.seen(spare, "/v1/chat/completions")] == [3, 3, 3]

    await ok(await client.get("/v1/usage", headers=admin))
    recorded = await rows(clean_database, "SELECT variant, config, finish_reason FROM completions ORDER BY id")
    assert [(r["variant"], r["config"]) for r in recorded] == [("treatment", "spare")] * 3 + [("control", "main")] * 3
    assert {r["finish_reason"] for r in recorded[:3]} == {"length"}


# (field, value) a careless or hostile client sends as its unit; the door takes ``user`` as the unit when ``unit`` is
# absent, so each is sent both ways there.
ODD_UNITS: list[tuple[str, Any]] = [
    ("unit", 5),
    ("unit", True),
    ("unit", ["user-1"]),
    ("unit", {"id": "user-1"}),
    ("unit", ""),
    ("unit", "u" * 257),
    ("user", 7),
    ("user", ""),
    ("user", "u" * 257),
]


async def test_odd_units_are_refused_by_name_through_both_doors_and_the_longest_unit_is_routed_and_recorded(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine, fast_path: bool
) -> None:
    client = await served(fast_path=fast_path, experiment_exposure_flush_seconds=0.05)
    await config(client, admin, "main", backend="fault", model=unique("ok"))
    await prompt(client, admin, "Say hello to {{ name }}.", "Greet {{ name }}.")
    await started_experiment(client, admin, "odd")
    await until_routed(client, admin, "someone")
    for field, value in ODD_UNITS:
        complete = await client.post(COMPLETE, json={"variables": ADA, field: value}, headers=admin)
        assert complete.status_code == 422, (field, value, complete.text)
        assert [e["field"] for e in problem(complete)["errors"]] == [field]
        for stream in (False, True):
            body = {"model": "prompt:greet", "messages": [], "variables": ADA, "stream": stream, field: value}
            door = await client.post(CHAT, json=body, headers=admin)
            assert door.status_code == 422, (field, value, door.text)
            assert door.json()["error"]["param"] == field

    # The longest unit there may be, outside the Basic Multilingual Plane (two UTF-16 code units a character):
    # routed as the preview assigns it, through both doors, recorded and exposed whole.
    unit = "\N{GRINNING FACE}" * 256
    preview = {"unit": unit, "variables": ADA}
    side = (await ok(await client.post("/v1/experiments/odd/preview", json=preview, headers=admin)))["experiment"]
    whole = await ok(await client.post(COMPLETE, json={"variables": ADA, "unit": unit}, headers=admin))
    door = await client.post(
        CHAT, json={"model": "prompt:greet", "messages": [], "variables": ADA, "user": unit}, headers=admin
    )
    assert door.status_code == 200, door.text
    assert whole["experiment"] == door.json()["registry"]["experiment"] == side
    assert side["in_experiment"] is True
    await ok(await client.get("/v1/usage", headers=admin))
    assert (
        await rows(clean_database, "SELECT unit, variant FROM completions ORDER BY id")
        == [{"unit": unit, "variant": side["variant"]}] * 2
    )

    async def exposed() -> bool:
        shown = await rows(clean_database, "SELECT unit, variant FROM exposures WHERE unit <> :other", other="someone")
        return shown == [{"unit": unit, "variant": side["variant"]}]

    await eventually(exposed, "the unit's one exposure to be written")


async def test_a_rollout_of_a_candidate_of_another_kind_than_production_is_refused(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """A text candidate of a chat prompt would refuse every request of its units through the door's chat endpoint
    (and hand apps that render the chat messages they ask for a text): refused after the exposure, before a
    completion is recorded, so no guardrail would see it, and at the end it would take all of production."""
    client = await served()
    await config(client, admin, "main", backend="fault", model=unique("ok"))
    await prompt(client, admin, "Say hello to {{ name }}.")
    text = {"kind": "text", "template": "Say hello to {{ name }}.", "config": {"name": "main"}}
    await ok(await client.post("/v1/prompts/greet/versions", json=text, headers=admin))
    await ok(await client.post("/v1/metrics", json={"key": "converted", "kind": "binomial"}, headers=admin))
    body = {"candidate_version": 2, "steps": [{"share": 1.0}], "guardrails": [{"metric": "converted"}]}
    refused = await client.post("/v1/prompts/greet/rollouts", json=body, headers=admin)
    assert refused.status_code == 422, refused.text
    assert [(e["field"], e["message"]) for e in problem(refused)["errors"]] == [
        (
            "candidate_version",
            "is a text version and production (version 1) a chat one: requests that production's callers send "
            "would be refused on it",
        )
    ]
    assert await rows(clean_database, "SELECT id FROM rollouts") == []
    assert await rows(clean_database, "SELECT id FROM experiments") == []
    answer = await client.post(
        CHAT, json={"model": "prompt:greet", "messages": [], "variables": ADA, "user": "u-1"}, headers=admin
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["registry"]["experiment"] is None
