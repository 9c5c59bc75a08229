"""A judge on the real vLLM (CPU, tiny random-weight model): the structured answer's protocol, not its wisdom.

The model's words are random; guided decoding holds them to the judge's JSON schema (the request carries
it as a json_schema response_format), and the run records the judge's versions with each score.
"""

from __future__ import annotations

import ast
import re

import httpx
import pytest

from tests.completions.conftest import RegistryFactory, backend, registry  # noqa: F401
from tests.evals.conftest import answers, dataset, finished, ok, start_run

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.fixture
async def vllm(registry: RegistryFactory, vllm_url: str) -> httpx.AsyncClient:  # noqa: F811
    return await registry(
        {"local": backend(vllm_url, first_token_timeout=30, total_timeout=120)}, eval_poll_seconds=0.05
    )


async def test_a_judge_on_vllm_answers_a_schema_held_score_and_reason(
    vllm: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await ok(await vllm.post("/v1/configs", json={"name": "local-tiny"}, headers=admin))
    await ok(
        await vllm.post(
            "/v1/configs/local-tiny/versions",
            json={"backend": "local", "model": "tiny", "params": {"temperature": 0, "max_tokens": 400}},
            headers=admin,
        )
    )
    await ok(await vllm.post("/v1/prompts", json={"name": "grader"}, headers=admin))
    await ok(
        await vllm.post(
            "/v1/prompts/grader/versions",
            json={
                "kind": "chat",
                "messages": [{"role": "user", "content": "Grade {{ output }} against {{ expected }} as JSON."}],
                "config": {"name": "local-tiny", "version": 1},
            },
            headers=admin,
        )
    )
    await ok(
        await vllm.post(
            "/v1/prompts/grader/versions/1/promote", json={"to": "production", "expected_current": None}, headers=admin
        )
    )
    await ok(
        await vllm.post(
            "/v1/configs/local-tiny/versions",
            json={"backend": "local", "model": "tiny", "params": {"temperature": 0, "max_tokens": 16}},
            headers=admin,
        )
    )
    await ok(await vllm.post("/v1/prompts", json={"name": "answered"}, headers=admin))
    await ok(
        await vllm.post(
            "/v1/prompts/answered/versions",
            json={
                "kind": "chat",
                "messages": [{"role": "user", "content": "The capital of France? {{ answer }}"}],
                "config": {"name": "local-tiny", "version": 2},
            },
            headers=admin,
        )
    )
    await dataset(vllm, admin, "graded", answers(("Paris", "Paris"), ("Lyon", "Paris")))
    run = await start_run(
        vllm,
        admin,
        prompt="answered",
        version=1,
        dataset={"name": "graded"},
        scorers=[{"kind": "judge", "prompt": "grader"}],
    )
    done = await finished(vllm, admin, run["id"])
    items = (await vllm.get(f"/v1/evals/runs/{run['id']}/items", headers=admin)).json()["items"]
    assert done["items_errored"] == 0, [item["error"] for item in items]
    assert (done["status"], done["items_done"], done["items_errored"]) == ("completed", 2, 0)
    for item in items:
        judged = item["scores"][0]
        assert judged["judge"] == {"prompt": "grader", "version": 1, "config": "local-tiny", "config_version": 1}
        if judged["reason"].startswith("the judge's answer is not a score and reason: "):
            # Random weights may spend every token on the white space JSON allows between tokens (a server
            # started with disable_any_whitespace prevents it); what the model wrote still has the schema's
            # shape: an object whose first key is score.
            raw = ast.literal_eval(judged["reason"].split(": ", 1)[1])
            compact = re.sub(r"\s", "", raw)  # the reason shows the answer's first 200 characters
            assert compact.startswith('{"score"') or '{"score"'.startswith(compact), raw
        else:
            assert 0.0 <= judged["value"] <= 1.0, judged
