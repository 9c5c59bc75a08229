"""A model-graded guard on the real vLLM (CPU, tiny random-weight model): the verdict's protocol, not its wisdom.

The model's words are random, so the verdict is too; guided decoding holds the answer to the verdict's JSON
schema (the classifier's request carries it as a json_schema response_format). The test checks that the
classifier ran through the completion path, that its answer was read as a verdict (or, when random weights
spent every token on white space, that what it wrote had the schema's shape) and that the outcome was recorded.
"""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import RegistryFactory, backend
from tests.guards.conftest import config_version, prompt_on, records

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.fixture
async def vllm(registry: RegistryFactory, vllm_url: str) -> httpx.AsyncClient:
    return await registry({"local": backend(vllm_url, first_token_timeout=30, total_timeout=120)})


async def test_a_model_guard_on_vllm_reads_a_structured_verdict_and_records_it(
    vllm: httpx.AsyncClient, admin: dict[str, str], admin_engine: AsyncEngine
) -> None:
    judge = {"backend": "local", "model": "tiny", "params": {"temperature": 0, "max_tokens": 300}}
    await config_version(vllm, admin, "local-judge", judge)
    await prompt_on(vllm, admin, "moderator", "local-judge", 1, "Is this harmful? Answer as JSON. {{ text }}")
    guard = {"name": "moderation", "kind": "model", "prompt": "moderator", "on": "both", "action": "flag"}
    body = {"backend": "local", "model": "tiny", "params": {"max_tokens": 8}, "guards": [guard]}
    number = await config_version(vllm, admin, "cfg", body)
    await prompt_on(vllm, admin, "ask", "cfg", number, "Answer {{ question }}")

    response = await vllm.post("/v1/prompts/ask/complete", json={"variables": {"question": "hi"}}, headers=admin)

    assert response.status_code == 200, response.text
    found = await records(vllm, admin, admin_engine)
    classifier_runs = [r for r in found if r["prompt"] == "moderator"]
    assert len(classifier_runs) == 2  # the input, then the answer
    assert all(r["status"] == "ok" and r["output_tokens"] > 0 for r in classifier_runs)
    [asked] = [r for r in found if r["prompt"] == "ask"]
    outcomes = asked["guard_outcomes"]
    assert sorted(o["stage"] for o in outcomes) == ["input", "output"]
    for outcome in outcomes:
        assert outcome["guard"] == "moderation"
        if outcome["outcome"] == "error":
            assert outcome["error"] == "guard_classifier_answer", outcome
            # The detail quotes the answer's start (repr, cut to the detail's length): white space and its escapes out.
            raw = outcome["detail"].split(": ", 1)[1]
            compact = re.sub(r"\s|\\[ntr]", "", raw).strip("'")  # the closing quote too, when the answer was short
            assert compact.startswith('{"flagged"') or '{"flagged"'.startswith(compact), raw
        else:
            assert outcome["outcome"] in ("passed", "flagged"), outcome
    assert asked["guard_flagged"] == any(o["outcome"] == "flagged" for o in outcomes)
