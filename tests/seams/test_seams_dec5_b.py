"""Features meeting at their edges, second round: names the schemas must refuse, the webhook events of promotions
no one asked for by name (an experiment's winner, a rollout's end), what a rollout's refused promotion announces,
and version numbers past the column on the OpenAI door.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.lib.changes import Change
from registry.settings import Settings
from tests.conftest import AppClient, count_rows, openai_problem, problem, serve_in_process
from tests.experiments.conftest import make_experiment, make_metric, make_prompt, runtime_of, settle
from tests.rollouts.conftest import settings as settings  # no background flushes or checks
from tests.seams.conftest import eventually, ok, rows

Headers = dict[str, str]


async def events_after(engine: AsyncEngine, mark: int) -> list[dict[str, Any]]:
    return await rows(
        engine, "SELECT id, type, subject, payload, actor FROM outbox_events WHERE id > :mark ORDER BY id", mark=mark
    )


async def last_event_id(engine: AsyncEngine) -> int:
    found = await rows(engine, "SELECT coalesce(max(id), 0) AS id FROM outbox_events")
    return int(found[0]["id"])


# --------------------------------------------------------------------------- names with a trailing newline

# Python's ``$`` also matches before a final newline, and msgspec checks a pattern with ``re.search``: a name
# "greet\n" passed every name pattern. Such a name is no name a URL, a header or a log line can carry.
NEWLINE_NAMES = [
    pytest.param("/v1/prompts", {"name": "greet\n"}, "prompts", id="prompt"),
    pytest.param("/v1/prompts", {"name": "team/greet\n"}, "prompts", id="prompt-in-folder"),
    pytest.param("/v1/prompts", {"name": "tagged", "tags": ["beta\n"]}, "prompts", id="prompt-tag"),
    pytest.param("/v1/configs", {"name": "main\n"}, "model_configs", id="config"),
    pytest.param("/v1/evals/datasets", {"name": "cases\n"}, "eval_datasets", id="dataset"),
    pytest.param("/v1/keys", {"name": "app\n", "scopes": ["read"]}, "api_keys", id="key"),
    pytest.param("/v1/metrics", {"key": "converted\n", "kind": "binomial"}, "metrics", id="metric"),
]


@pytest.mark.parametrize(("path", "body", "table"), NEWLINE_NAMES)
async def test_a_name_ending_in_a_newline_is_refused_and_nothing_is_stored(
    client: AppClient, admin: Headers, clean_database: AsyncEngine, path: str, body: dict[str, Any], table: str
) -> None:
    before = await count_rows(clean_database, table)
    response = await client.post(path, json=body, headers=admin)
    assert response.status_code == 422, response.text
    problem(response)
    assert await count_rows(clean_database, table) == before


async def test_experiment_and_variant_keys_ending_in_a_newline_are_refused(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    variants = [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}]
    for key, variant in (("greet-test\n", "treatment"), ("greet-test", "treatment\n")):
        body = {
            "key": key,
            "prompt": "greet",
            "variants": [variants[0], {**variants[1], "key": variant}],
            "primary_metric": "converted",
        }
        response = await client.post("/v1/experiments", json=body, headers=admin)
        assert response.status_code == 422, response.text
        problem(response)
    assert await count_rows(clean_database, "experiments") == 0


async def test_a_guard_name_ending_in_a_newline_is_refused(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    await ok(await client.post("/v1/configs", json={"name": "guarded"}, headers=admin))
    guard = {"name": "no-secrets\n", "kind": "deny_patterns", "patterns": ["secret"]}
    body = {"backend": "vllm", "model": "m", "guards": [guard]}
    response = await client.post("/v1/configs/guarded/versions", json=body, headers=admin)
    assert response.status_code == 422, response.text
    problem(response)
    assert await count_rows(clean_database, "model_config_versions") == 0


# --------------------------------------------------------------------------- webhook events of implicit promotions


async def test_a_winner_with_its_own_config_fires_one_version_one_promotion_and_one_stop(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    await ok(await client.post("/v1/configs", json={"name": "fast"}, headers=admin))
    await ok(await client.post("/v1/configs/fast/versions", json={"backend": "vllm", "model": "small"}, headers=admin))
    variants = [
        {"key": "control", "prompt_version": 1},
        {"key": "small", "prompt_version": 2, "config": {"name": "fast", "version": 1}},
    ]
    await make_experiment(client, admin, "greet-test", "greet", variants=variants)
    mark = await last_event_id(clean_database)

    stopped = await ok(await client.post("/v1/experiments/greet-test/stop", json={"winner": "small"}, headers=admin))
    assert stopped["promoted"] == {"prompt": "greet", "version": 3, "created_version": True, "changed": True}

    events = await events_after(clean_database, mark)
    assert [e["type"] for e in events] == ["prompt.version.created", "prompt.promoted", "experiment.stopped"]
    created, promoted, stop = (e["payload"] for e in events)
    assert (created["prompt"], created["version"]) == ("greet", 3)
    assert (promoted["prompt"], promoted["version"], promoted["to_state"]) == ("greet", 3, "production")
    assert "greet-test" in promoted["reason"]
    assert {"version": 1, "from_state": "production", "to_state": "archived"} in promoted["changes"]
    assert (stop["experiment"], stop["winner"], stop["promoted_version"]) == ("greet-test", "small", 3)
    assert len({e["actor"] for e in events}) == 1  # the key that stopped it, on each


async def test_a_winner_already_in_production_fires_no_promotion(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "greet-test", "greet")
    mark = await last_event_id(clean_database)
    stopped = await ok(await client.post("/v1/experiments/greet-test/stop", json={"winner": "control"}, headers=admin))
    assert stopped["promoted"]["changed"] is False
    events = await events_after(clean_database, mark)
    assert [e["type"] for e in events] == ["experiment.stopped"]
    history = await ok(await client.get("/v1/prompts/greet/history", headers=admin))
    assert [(h["version"], h["to_state"]) for h in history["items"]] == [(1, "production")]


async def test_a_rollout_advanced_past_its_end_fires_each_event_once(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    body = {"candidate_version": 2, "steps": [{"share": 1.0}], "guardrails": [{"metric": "converted"}]}
    rollout = await ok(await client.post("/v1/prompts/greet/rollouts", json=body, headers=admin))
    await settle(client)
    mark = await last_event_id(clean_database)

    done = await ok(await client.post(f"/v1/rollouts/{rollout['id']}/advance", headers=admin))
    assert done["status"] == "completed"

    events = await events_after(clean_database, mark)
    assert sorted(e["type"] for e in events) == ["experiment.stopped", "prompt.promoted", "rollout.completed"]
    by_type = {e["type"]: e["payload"] for e in events}
    assert (by_type["prompt.promoted"]["version"], by_type["prompt.promoted"]["to_state"]) == (2, "production")
    assert by_type["rollout.completed"]["promoted_version"] == 2
    assert by_type["experiment.stopped"]["experiment"] == rollout["experiment"]
    assert by_type["experiment.stopped"]["promoted_version"] == 2
    # The rollout ended: a second advance is refused and fires nothing.
    again = await client.post(f"/v1/rollouts/{rollout['id']}/advance", headers=admin)
    assert again.status_code == 409
    problem(again)
    assert len(await events_after(clean_database, mark)) == 3


async def test_an_aborted_rollout_fires_no_prompt_event(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    body = {"candidate_version": 2, "steps": [{"share": 0.5}, {"share": 1.0}], "guardrails": [{"metric": "converted"}]}
    rollout = await ok(await client.post("/v1/prompts/greet/rollouts", json=body, headers=admin))
    await settle(client)
    mark = await last_event_id(clean_database)
    await ok(await client.post(f"/v1/rollouts/{rollout['id']}/abort", json={"reason": "no"}, headers=admin))
    events = await events_after(clean_database, mark)
    assert sorted(e["type"] for e in events) == ["experiment.stopped", "rollout.aborted"]
    stop = next(e["payload"] for e in events if e["type"] == "experiment.stopped")
    assert (stop["winner"], stop["promoted_version"]) == (None, None)
    resolved = await ok(await client.get("/v1/prompts/greet", headers=admin))
    assert resolved["labels"]["production"] == 1


# --------------------------------------------------------------------------- a refused promotion announces nothing


async def test_a_rollout_whose_promotion_the_gate_refuses_announces_no_version_and_no_stop(
    client: AppClient, admin: Headers, clean_database: AsyncEngine
) -> None:
    """The rollout's promotion runs in a savepoint; a gate refusal rolls it back (the new version carrying the
    rollout's config, the experiment's stop). Caches and change-feed listeners must not hear of them either."""
    await make_prompt(client, admin, "greet")
    await make_metric(client, admin, "converted")
    await ok(await client.post("/v1/configs", json={"name": "fast"}, headers=admin))
    await ok(await client.post("/v1/configs/fast/versions", json={"backend": "vllm", "model": "small"}, headers=admin))
    await ok(await client.post("/v1/evals/datasets", json={"name": "cases"}, headers=admin))
    items = {"items": [{"variables": {"x": "a"}}]}
    await ok(await client.post("/v1/evals/datasets/cases/versions", json=items, headers=admin))
    body = {
        "candidate_version": 2,
        "config": {"name": "fast", "version": 1},
        "steps": [{"share": 1.0}],
        "guardrails": [{"metric": "converted"}],
    }
    rollout = await ok(await client.post("/v1/prompts/greet/rollouts", json=body, headers=admin))
    gate = {"dataset": {"name": "cases"}, "min_pass_rate": 0.5}  # set since: no run of any version meets it
    await ok(await client.put("/v1/prompts/greet/gates/production", json=gate, headers=admin))
    await settle(client)
    heard: list[Change] = []
    runtime_of(client.app).bus.subscribe(heard.append)
    mark = await last_event_id(clean_database)

    moved = await ok(await client.post(f"/v1/rollouts/{rollout['id']}/advance", headers=admin))
    assert moved["status"] == "paused"
    assert moved["reason"].startswith("the candidate's promotion was refused")

    async def paused_heard() -> bool:
        return Change("prompt", "greet", "rollout_paused") in heard

    await eventually(paused_heard, "the pause to be announced")
    assert [e["type"] for e in await events_after(clean_database, mark)] == ["rollout.paused"]
    listed = await ok(await client.get("/v1/prompts/greet/versions", headers=admin))
    assert sorted(v["version"] for v in listed["items"]) == [1, 2]
    experiment = await ok(await client.get(f"/v1/experiments/{rollout['experiment']}", headers=admin))
    assert experiment["status"] == "running"
    about = [c for c in heard if c.kind in ("prompt", "experiment")]
    assert about == [Change("prompt", "greet", "rollout_paused")], about


# --------------------------------------------------------------------------- version numbers past the column


@pytest.fixture(params=[True, False], ids=["fast-path", "litestar"])
async def door(request: pytest.FixtureRequest, settings: Settings, app: Litestar) -> AsyncIterator[AppClient]:
    """The app with its fast paths in front of Litestar, or without (``app`` first: it cleans the database)."""
    async with serve_in_process(create_app(settings.model_copy(update={"fast_path": request.param}))) as http:
        yield http


@pytest.mark.parametrize("number", ["2147483648", "9999999999"])
async def test_a_version_past_the_column_on_the_openai_door_is_refused_not_a_server_error(
    door: AppClient, admin: Headers, number: str
) -> None:
    await ok(await door.post("/v1/prompts", json={"name": "plain"}, headers=admin))
    await ok(await door.post("/v1/prompts/plain/versions", json={"kind": "text", "template": "hi"}, headers=admin))
    await ok(await door.post("/v1/configs", json={"name": "bare"}, headers=admin))
    await ok(await door.post("/v1/configs/bare/versions", json={"backend": "vllm", "model": "m"}, headers=admin))
    response = await door.post("/v1/completions", json={"model": f"prompt:plain@{number}", "prompt": ""}, headers=admin)
    assert response.status_code in (404, 422), response.text
    openai_problem(response)
    chat = {"model": f"config:bare@{number}", "messages": [{"role": "user", "content": "hi"}]}
    response = await door.post("/v1/chat/completions", json=chat, headers=admin)
    assert response.status_code in (404, 422), response.text
    openai_problem(response)


@pytest.mark.parametrize("model", ["prompt:plain\n", "config:bare\n", "prompt:plain@1\n"])
async def test_a_model_name_ending_in_a_newline_is_not_found(door: AppClient, admin: Headers, model: str) -> None:
    """``re.match`` with ``$`` took the name with a newline at its end for the name without: the door answered
    for a model it does not list."""
    await ok(await door.post("/v1/prompts", json={"name": "plain"}, headers=admin))
    await ok(await door.post("/v1/prompts/plain/versions", json={"kind": "text", "template": "hi"}, headers=admin))
    await ok(await door.post("/v1/configs", json={"name": "bare"}, headers=admin))
    await ok(await door.post("/v1/configs/bare/versions", json={"backend": "vllm", "model": "m"}, headers=admin))
    path, body = (
        ("/v1/completions", {"model": model, "prompt": ""})
        if model.startswith("prompt:")
        else ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]})
    )
    response = await door.post(path, json=body, headers=admin)
    assert response.status_code == 404, response.text
    assert openai_problem(response)["type"].endswith("model_not_found"), response.text
