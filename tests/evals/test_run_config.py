"""A run's config version is the one its completions are planned with, once per item, in place of the version's own.

The fault server counts what each model was asked: its ``/tokenize`` requests are the context checks (the
configs' small context limit makes every check count the prompt), its chat requests are the completions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from registry.evals.models import EvalDataset, EvalDatasetVersion, EvalRun
from registry.settings import Settings
from tests.completions.conftest import backend, serve_in_thread
from tests.completions.fault_server import CHAT, FaultServer
from tests.conftest import AppClient
from tests.evals.conftest import Headers, dataset, finished, ok, registry_on, start_run
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


async def queue_run(engine: AsyncEngine, *, prompt: str, version: int, config: str, config_version: int) -> int:
    """A queued run of ``prompt`` version ``version`` with ``config@config_version`` on dataset ``{prompt}-cases``.

    Written as a run row, as the API writes one: the API only takes runs of versions that link a config.
    """
    async with AsyncSession(engine) as session, session.begin():
        found = (
            await session.execute(
                select(EvalDatasetVersion.id, EvalDatasetVersion.number, EvalDatasetVersion.item_count)
                .join(EvalDataset, EvalDataset.id == EvalDatasetVersion.dataset_id)
                .where(EvalDataset.name == f"{prompt}-cases")
            )
        ).one()
        run = EvalRun(
            prompt=prompt,
            prompt_version=version,
            config=config,
            config_version=config_version,
            dataset_version_id=found.id,
            dataset=f"{prompt}-cases",
            dataset_version=found.number,
            scorers=[{"kind": "exact_match"}],
            pass_rule=None,
            concurrency=2,
            status="queued",
            total_items=found.item_count,
            api_key_id=None,
            created_by="test",
        )
        session.add(run)
        await session.flush()
        return run.id


def items_of(count: int) -> list[dict[str, Any]]:
    return [{"variables": {"answer": f"{LONG_ANSWER} {i}"}, "expected": FAULT_ANSWER} for i in range(count)]


async def test_a_version_without_a_config_of_its_own_is_evaluated_with_the_runs_config(
    fault_evals: tuple[AppClient, FaultServer], admin: Headers, clean_database: AsyncEngine
) -> None:
    client, server = fault_evals
    model = "ok/unlinked-run"
    params = {"temperature": 0.5, "max_tokens": 3}
    await config_version(client, admin, "unlinked-run", {"model": model, "params": params})
    version = await prompt_version(client, admin, "unlinked", "{{ answer }}")
    await dataset(client, admin, "unlinked-cases", items_of(3))

    run_id = await queue_run(
        clean_database, prompt="unlinked", version=version, config="unlinked-run", config_version=1
    )
    done = await finished(client, admin, run_id)

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
