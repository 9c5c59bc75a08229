"""A run's config version is the one its completions are planned with, once per item, in place of the version's own.

The fault server counts what each model was asked: its ``/tokenize`` requests are the context checks (the
configs' small context limit makes every check count the prompt), its chat requests are the completions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import Settings
from tests.completions.conftest import backend, serve_in_thread
from tests.completions.fault_server import CHAT, FaultServer
from tests.conftest import AppClient, problem
from tests.evals.conftest import Headers, answers, dataset, finished, ok, publish, registry_on, start_run
from tests.evals.stand_in import StandIn

# More bytes than the context limit below, so the upper bound cannot clear a prompt and the backend counts it;
# counted (3 + 11 words with the item's number, plus max_tokens) it fits.
LONG_ANSWER = "alpha bravo charlie delta echo foxtrot golf hotel india juliet"
CONTEXT_LIMIT = 40
FAULT_ANSWER = "Hello from the"  # what the fault server's "ok" answers with max_tokens of 3 or more


@pytest.fixture
async def fault_evals(settings: Settings, clean_database: AsyncEngine) -> AsyncIterator[tuple[AppClient, FaultServer]]:
    """The registry with a fault server of the test's own as backend ``fault``, and that server."""
    server = FaultServer()
    with serve_in_thread(server, lifespan="off") as url:
        async with registry_on(settings, {"fault": backend(url, max_retries=0)}) as client:
            yield client, server


async def config_version(
    client: httpx.AsyncClient, headers: Headers, name: str, body: dict[str, Any], *, backend_name: str = "fault"
) -> int:
    """A new version of config ``name`` (created if missing) on ``backend_name``; returns its number."""
    if (await client.get(f"/v1/configs/{name}/versions", headers=headers)).status_code == 404:
        await ok(await client.post("/v1/configs", json={"name": name}, headers=headers))
    created = await ok(
        await client.post(f"/v1/configs/{name}/versions", json={"backend": backend_name, **body}, headers=headers)
    )
    number: int = created["version"]
    return number


async def prompt_version(
    client: httpx.AsyncClient, headers: Headers, name: str, template: str, config: dict[str, Any] | None = None
) -> int:
    """A new chat version of ``name`` (created if missing), linked to ``config`` or to no config at all."""
    if (await client.get(f"/v1/prompts/{name}/versions", headers=headers)).status_code == 404:
        await ok(await client.post("/v1/prompts", json={"name": name}, headers=headers))
    body: dict[str, Any] = {"kind": "chat", "messages": [{"role": "user", "content": template}]}
    if config is not None:
        body["config"] = config
    number: int = (await ok(await client.post(f"/v1/prompts/{name}/versions", json=body, headers=headers)))["version"]
    return number


async def run_with(
    client: httpx.AsyncClient, headers: Headers, prompt: str, version: int, config: dict[str, Any]
) -> dict[str, Any]:
    """A run of ``prompt`` version ``version`` with the run config ``config`` on dataset ``{prompt}-cases``."""
    return await start_run(
        client, headers, prompt=prompt, version=version, config=config, dataset={"name": f"{prompt}-cases"}
    )


def items_of(count: int) -> list[dict[str, Any]]:
    return [{"variables": {"answer": f"{LONG_ANSWER} {i}"}, "expected": FAULT_ANSWER} for i in range(count)]


async def test_a_version_without_a_config_of_its_own_is_evaluated_with_the_runs_config(
    fault_evals: tuple[AppClient, FaultServer], admin: Headers
) -> None:
    client, server = fault_evals
    model = "ok/unlinked-run"
    params = {"temperature": 0.5, "max_tokens": 3}
    await config_version(client, admin, "unlinked-run", {"model": model, "params": params})
    version = await prompt_version(client, admin, "unlinked", "{{ answer }}")
    await dataset(client, admin, "unlinked-cases", items_of(3))

    run = await run_with(client, admin, "unlinked", version, {"name": "unlinked-run", "version": 1})
    run_id = run["id"]
    done = await finished(client, admin, run_id)

    assert (run["config"], run["config_version"]) == ("unlinked-run", 1)
    assert (done["status"], done["error"]) == ("completed", None)
    assert (done["items_done"], done["items_passed"], done["items_errored"]) == (3, 3, 0)
    items = (await client.get(f"/v1/evals/runs/{run_id}/items", headers=admin)).json()["items"]
    assert [(item["status"], item["output"]) for item in items] == [("scored", FAULT_ANSWER)] * 3
    assert len(server.seen(model, CHAT)) == 3


async def test_a_run_config_replaces_the_versions_own_and_each_item_is_planned_once(
    fault_evals: tuple[AppClient, FaultServer], admin: Headers
) -> None:
    client, server = fault_evals
    own, chosen = "ok/swap-own", "ok/swap-run"
    await config_version(
        client,
        admin,
        "swap",
        {"model": own, "params": {"temperature": 0.9, "max_tokens": 2}, "max_context_tokens": CONTEXT_LIMIT},
    )
    await config_version(
        client,
        admin,
        "swap",
        {"model": chosen, "params": {"temperature": 0.3, "max_tokens": 3}, "max_context_tokens": CONTEXT_LIMIT},
    )
    version = await prompt_version(client, admin, "swapped", "{{ answer }}", {"name": "swap", "version": 1})
    await dataset(client, admin, "swapped-cases", items_of(4))

    run = await start_run(
        client, admin, prompt="swapped", version=version, config_version=2, dataset={"name": "swapped-cases"}
    )
    done = await finished(client, admin, run["id"])

    assert (done["status"], done["config_version"], done["items_passed"]) == ("completed", 2, 4)
    assert server.seen(own) == []  # neither counted nor asked: the version's own config plans nothing
    assert len(server.seen(chosen, "/tokenize")) == 4  # one context check per item
    asked = server.seen(chosen, CHAT)
    assert len(asked) == 4
    assert {(r.payload["temperature"], r.payload["max_tokens"]) for r in asked} == {(0.3, 3)}


async def test_a_version_with_a_config_of_its_own_runs_with_any_config_named_by_label(
    fault_evals: tuple[AppClient, FaultServer], admin: Headers
) -> None:
    client, server = fault_evals
    own, chosen = "ok/cross-own", "ok/cross-other"
    await config_version(client, admin, "cross-own", {"model": own, "params": {"max_tokens": 3}})
    await config_version(client, admin, "cross-other", {"model": "ok/cross-old", "params": {"max_tokens": 3}})
    number = await config_version(client, admin, "cross-other", {"model": chosen, "params": {"max_tokens": 3}})
    promote = {"to": "production", "expected_current": None}
    await ok(await client.post(f"/v1/configs/cross-other/versions/{number}/promote", json=promote, headers=admin))
    version = await prompt_version(client, admin, "crossed", "{{ answer }}", {"name": "cross-own", "version": 1})
    await dataset(client, admin, "crossed-cases", items_of(2))

    run = await run_with(client, admin, "crossed", version, {"name": "cross-other", "label": "production"})
    done = await finished(client, admin, run["id"])

    assert (done["config"], done["config_version"], done["items_passed"]) == ("cross-other", 2, 2)  # pinned
    assert (server.seen(own), server.seen("ok/cross-old")) == ([], [])
    assert len(server.seen(chosen, CHAT)) == 2
    audit = (await client.get("/v1/audit", params={"resource_name": str(run["id"])}, headers=admin)).json()["items"]
    created = [entry["after"] for entry in audit if entry["action"] == "eval_run.create"]
    assert [(entry["config"], entry["own_config"]) for entry in created] == [("cross-other@2", False)]


@pytest.mark.parametrize(
    ("version_config", "run_fields", "field", "detail"),
    [
        (None, {}, "config", "links no model config: name the config to evaluate it with in config"),
        (None, {"config_version": 1}, "config", "links no model config"),
        (None, {"config": {"name": "nowhere"}}, "config", "nowhere"),
        (None, {"config": {"name": "refusing-config", "version": 9}}, "config", "version 9"),
        (None, {"config": {"name": "refusing-config", "label": "staging"}}, "config", "staging"),
        (None, {"config": {"name": "refusing-config", "version": 1, "label": "latest"}}, "config", "not both"),
        (
            {"name": "refusing-config", "version": 1},
            {"config": {"name": "refusing-config", "version": 1}, "config_version": 1},
            "config_version",
            "not both",
        ),
    ],
    ids=[
        "no-config-anywhere",
        "config-version-without-own-config",
        "unknown-config",
        "unknown-config-version",
        "label-not-set",
        "version-and-label",
        "config-and-config-version",
    ],
)
async def test_a_run_config_that_cannot_be_used_is_refused_naming_the_field_and_nothing_is_queued(
    evals: AppClient,
    admin: Headers,
    version_config: dict[str, Any] | None,
    run_fields: dict[str, Any],
    field: str,
    detail: str,
) -> None:
    await config_version(evals, admin, "refusing-config", {"model": "echo"}, backend_name="stand-in")
    version = await prompt_version(evals, admin, "refusing", "{{ answer }}", version_config)
    await dataset(evals, admin, "refusing-cases", answers(("a", "a")))
    body = {
        "prompt": "refusing",
        "version": version,
        "dataset": {"name": "refusing-cases"},
        "scorers": [{"kind": "exact_match"}],
        **run_fields,
    }

    refused = await evals.post("/v1/evals/runs", json=body, headers=admin)

    assert refused.status_code == 422, refused.text
    found = problem(refused)
    assert detail in found["detail"]
    assert [error["field"] for error in found["errors"]] == [field]
    assert (await evals.get("/v1/evals/runs", headers=admin)).json()["items"] == []


async def test_a_runs_config_from_elsewhere_shows_on_the_run_and_runs_each_item(
    evals: AppClient, admin: Headers, stand_in: tuple[StandIn, str]
) -> None:
    version = await publish(evals, admin, "elsewhere", model="down")  # its own config would never answer
    await config_version(evals, admin, "borrowed", {"model": "echo"}, backend_name="stand-in")
    promote = {"to": "production", "expected_current": None}
    await ok(await evals.post("/v1/configs/borrowed/versions/1/promote", json=promote, headers=admin))
    await dataset(evals, admin, "elsewhere-cases", answers(("a", "a"), ("b", "b")))

    run = await run_with(evals, admin, "elsewhere", version, {"name": "borrowed"})
    done = await finished(evals, admin, run["id"])

    assert (run["config"], run["config_version"]) == ("borrowed", 1)  # no version, no label: production
    assert (done["status"], done["items_passed"]) == ("completed", 2)
    assert stand_in[0].completions("down") == []
    listed = (await evals.get("/v1/evals/runs", params={"prompt": "elsewhere"}, headers=admin)).json()["items"]
    assert [(r["config"], r["config_version"]) for r in listed] == [("borrowed", 1)]


JUDGE = '{"score": 1, "reason": "graded {{ output }}"}'


async def test_a_judge_prompt_without_a_config_of_its_own_runs_with_the_scorers_config(
    evals: AppClient, admin: Headers, stand_in: tuple[StandIn, str]
) -> None:
    await config_version(
        evals, admin, "judge-only", {"model": "echo", "params": {"temperature": 0}}, backend_name="stand-in"
    )
    judge = await prompt_version(evals, admin, "bare-grader", JUDGE)
    await config_version(
        evals, admin, "judged-config", {"model": "echo", "params": {"temperature": 0}}, backend_name="stand-in"
    )
    version = await prompt_version(evals, admin, "judged", "{{ answer }}", {"name": "judged-config", "version": 1})
    await dataset(evals, admin, "judged-cases", [{"variables": {"answer": "a"}, "expected": "a"}])
    scorer = {"kind": "judge", "prompt": "bare-grader", "version": judge, "config": "judge-only", "config_version": 1}

    run = await start_run(
        evals, admin, prompt="judged", version=version, dataset={"name": "judged-cases"}, scorers=[scorer]
    )
    done = await finished(evals, admin, run["id"])

    assert (done["status"], done["items_passed"]) == ("completed", 1)
    judged = (await evals.get(f"/v1/evals/runs/{run['id']}/items", headers=admin)).json()["items"][0]["scores"][0]
    assert (judged["value"], judged["reason"]) == (1.0, "graded a")
    assert judged["judge"] == {"prompt": "bare-grader", "version": judge, "config": "judge-only", "config_version": 1}
    assert stand_in[0].asked('{"score": 1, "reason": "graded a"}') == 1
