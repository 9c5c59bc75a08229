"""A request that fails over to its config's fallback is charged what each backend spent, at that backend's
config's prices, and usage by config shows each config's own part.

Config ``cfg`` runs on backend ``flaky``, whose first attempt spends tokens and fails: an answer broken off after
two tokens (a whole answer, read before anything reaches the caller), or a prefill reported in the first chunk and
no token within the first-token timeout (a stream). Its fallback ``spare`` then answers, or refuses the request as
too long for its context. Through ``/v1/prompts/greet/complete`` and the OpenAI door, streamed and not, the key's
budget, the usage report by config and the experiment's cost metric must all count the first backend's tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import Settings
from tests.completions.conftest import backend, parse_sse, publish, unique
from tests.completions.fault_server import PROMPT_TOKENS, FaultServer
from tests.conftest import AppClient, problem
from tests.experiments.conftest import runtime_of, settle

CFG_PRICES, SPARE_PRICES = (1.0, 3.0), (10.0, 30.0)  # per million input and output tokens
UNIT = "unit-1"


def cost(input_tokens: int, output_tokens: int, prices: tuple[float, float]) -> float:
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1e6


@pytest.fixture
def settings(settings: Settings, fault: FaultServer) -> Settings:
    url = fault.url  # type: ignore[attr-defined]
    # The first backend gets a short first-token timeout: a prefill with no token after it fails over at once.
    flaky = backend(url, max_retries=0, first_token_timeout=1.0)
    return settings.model_copy(
        update={"backends": {"flaky": flaky, "fault": backend(url)}, "completion_usage_flush_seconds": 3600.0}
    )


def first_attempt(stream: bool) -> tuple[str, int, int]:
    """The first backend's behaviour, and the input and output tokens it reports before failing."""
    if stream:
        # The chat stream's first chunk (the role) reports the prompt; no token comes within the timeout.
        return unique("slow-first:10"), PROMPT_TOKENS, 0
    return unique("reset-after:2"), PROMPT_TOKENS, 2


async def prepare(client: AppClient, admin: dict[str, str], *, first: str, spare: str) -> None:
    """``greet`` on ``cfg`` (backend flaky, ``first``) falling back to ``spare`` (backend fault, ``spare``), and a
    running experiment on ``greet`` whose variants both run ``cfg``, with a cost-per-completion metric."""
    await publish(client, admin, backend="fault", model=spare, config="spare", prompt=None, prices=SPARE_PRICES)
    await publish(
        client,
        admin,
        backend="flaky",
        model=first,
        fallback={"name": "spare"},
        max_context_tokens=4096,
        prices=CFG_PRICES,
    )
    metric = {"key": "cost", "kind": "ratio", "source_field": "cost", "denominator_field": "completions"}
    response = await client.post(
        "/v1/metrics", json={"source": "completions", "direction": "lower", **metric}, headers=admin
    )
    assert response.status_code == 201, response.text
    experiment = {
        "key": "spend",
        "prompt": "greet",
        "variants": [
            {"key": "a", "prompt_version": 1, "config": {"name": "cfg", "version": 1}},
            {"key": "b", "prompt_version": 1, "config": {"name": "cfg", "version": 1}},
        ],
        "primary_metric": "cost",
    }
    for response in (
        await client.post("/v1/experiments", json=experiment, headers=admin),
        await client.post("/v1/experiments/spend/start", headers=admin),
    ):
        assert response.status_code in (200, 201), response.text
    await settle(client)


async def complete(client: AppClient, admin: dict[str, str], door: str, stream: bool) -> tuple[int, Any]:
    """Run ``greet`` for the unit through ``door``: the status, and the body (a stream's events when it is 200)."""
    if door == "prompt":
        path = "/v1/prompts/greet/complete"
        body: dict[str, Any] = {"variables": {"name": "Ada"}, "unit": UNIT, "stream": stream}
    else:
        path = "/v1/chat/completions"
        body = {"model": "prompt:greet", "messages": [], "variables": {"name": "Ada"}, "unit": UNIT, "stream": stream}
    response = await client.post(path, json=body, headers=admin)
    if response.status_code != 200:
        # The OpenAI door's error carries the problem document inside OpenAI's error shape.
        return response.status_code, problem(response) if door == "prompt" else response.json()["error"]["problem"]
    if not stream:
        return 200, response.json()
    return 200, (parse_sse(response.text) if door == "prompt" else response.text)


async def spend_seen(client: AppClient, admin: dict[str, str], engine: AsyncEngine) -> dict[str, Any]:
    """What the key's budget, the usage report by config, the records and the experiment's cost metric say."""
    runtime = runtime_of(client.app)
    await runtime.experiments.exposures.flush()
    await runtime.experiments.aggregator.drain()
    await runtime.completions.recorder.flush()
    await runtime.experiments.aggregator.drain()
    [key] = (await client.get("/v1/keys/", headers=admin)).json()["items"]
    budget = (await client.get(f"/v1/keys/{key['id']}/budget", headers=admin)).json()
    usage = await client.get("/v1/usage", params={"group_by": ["config", "config_version"]}, headers=admin)
    assert usage.status_code == 200, usage.text
    results = await client.get("/v1/experiments/spend/results", headers=admin)
    assert results.status_code == 200, results.text
    [metric] = [m for m in results.json()["metrics"] if m["metric"] == "cost"]
    async with engine.connect() as connection:
        records = (await connection.execute(text("SELECT status, config, cost FROM completions"))).all()
    return {
        "budget": (budget["used_tokens"], budget["used_cost"]),
        "by_config": {
            row["config"]: (row["requests"], row["input_tokens"], row["output_tokens"], row["cost"])
            for row in usage.json()["items"]
        },
        "records": [tuple(record) for record in records],
        # One unit, one completion: its variant's mean cost per completion is the completion's cost.
        "experiment_cost": [v["mean"] for v in metric["variants"] if v["mean"]],
    }


DOORS = pytest.mark.parametrize("door", ["prompt", "openai"])
MODES = pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])


@DOORS
@MODES
async def test_a_fallback_refusing_the_request_as_too_long_leaves_the_first_backends_tokens_charged(
    client: AppClient, admin: dict[str, str], fault: FaultServer, clean_database: AsyncEngine, door: str, stream: bool
) -> None:
    first, first_input, first_output = first_attempt(stream)
    await prepare(client, admin, first=first, spare=unique("context"))

    status, body = await complete(client, admin, door, stream)

    # The fallback cannot hold the request: the caller gets the first backend's failure, as when its check says so.
    expected = (504, "upstream_timeout") if stream else (502, "upstream_unavailable")
    assert (status, body["type"].rsplit("/", 1)[-1]) == expected, body
    first_cost = cost(first_input, first_output, CFG_PRICES)
    seen = await spend_seen(client, admin, clean_database)
    assert seen["budget"][0] == first_input + first_output
    assert seen["budget"][1] == pytest.approx(first_cost)
    [(record_status, _, record_cost)] = seen["records"]
    assert record_status == "error"
    assert record_cost == pytest.approx(first_cost)
    by_config = seen["by_config"]
    assert by_config["cfg"][1:3] == (first_input, first_output)
    assert by_config["cfg"][3] == pytest.approx(first_cost)
    assert by_config["spare"][1:] == (0, 0, pytest.approx(0.0))  # the fallback's backend generated nothing
    assert sum(row[0] for row in by_config.values()) == 1  # one request
    assert seen["experiment_cost"] == [pytest.approx(first_cost)]


@DOORS
@MODES
async def test_a_fallback_that_answers_counts_each_backends_part_under_its_own_config(
    client: AppClient, admin: dict[str, str], fault: FaultServer, clean_database: AsyncEngine, door: str, stream: bool
) -> None:
    first, first_input, first_output = first_attempt(stream)
    await prepare(client, admin, first=first, spare=unique("ok"))

    status, body = await complete(client, admin, door, stream)

    assert status == 200, body
    first_cost, spare_cost = cost(first_input, first_output, CFG_PRICES), cost(PROMPT_TOKENS, 3, SPARE_PRICES)
    total = first_cost + spare_cost
    if door == "prompt" and not stream:
        assert body["fallback_used"] is True
        assert body["cost"] == pytest.approx(total)
    seen = await spend_seen(client, admin, clean_database)
    assert seen["budget"][0] == first_input + first_output + PROMPT_TOKENS + 3
    assert seen["budget"][1] == pytest.approx(total)
    [(record_status, record_config, record_cost)] = seen["records"]
    assert (record_status, record_config) == ("ok", "spare")
    assert record_cost == pytest.approx(total)
    by_config = seen["by_config"]
    assert by_config["cfg"][1:3] == (first_input, first_output)
    assert by_config["cfg"][3] == pytest.approx(first_cost)
    assert by_config["spare"][:3] == (1, PROMPT_TOKENS, 3)
    assert by_config["spare"][3] == pytest.approx(spare_cost)
    assert sum(row[3] for row in by_config.values()) == pytest.approx(seen["budget"][1])
    assert seen["experiment_cost"] == [pytest.approx(total)]
