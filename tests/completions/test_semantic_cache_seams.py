"""The semantic cache where it meets guards and budgets, with the real embedding model.

A config's input guards run before any lookup; its output guards run on a cached answer as on the model's;
nothing a guard blocked is kept and what a guard redacted is kept redacted. A key's budget is checked before
a lookup, and a hit adds nothing to what the key spent.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope
from registry.settings import Settings
from tests.completions.conftest import RegistryFactory, parse_sse, serve_in_thread, unique
from tests.completions.fault_server import CHAT, FaultServer, say
from tests.completions.semantic import SEMANTIC_SETTINGS, ask_as, embedding_backends, semantic_registry
from tests.conftest import KeyFactory, make_key_on, problem

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

QUESTION = "How do I reset my password?"
REWORDED = "How can I change my password?"  # 0.87 from QUESTION with all-MiniLM-L6-v2
FORBIDDEN = {"name": "no-secrets", "kind": "deny_patterns", "patterns": ["secret code"], "on": "output"}


class Guarded:
    """Prompt ``greet`` (``{{ question }}``, store_io, semantic cache at 0.8) on config ``cfg`` with ``guards``."""

    def __init__(self, http: httpx.AsyncClient, headers: dict[str, str], fault: FaultServer) -> None:
        self.http = http
        self.headers = headers
        self.fault = fault
        self.model = ""

    async def publish(self, model: str, guards: list[dict[str, Any]]) -> None:
        self.model = model

        async def ok(response: httpx.Response) -> dict[str, Any]:
            assert response.status_code in (200, 201), response.text
            body: dict[str, Any] = response.json()
            return body

        http, headers = self.http, self.headers
        await ok(await http.post("/v1/configs/", json={"name": "cfg"}, headers=headers))
        config = {"backend": "fault", "model": model, "params": {"max_tokens": 50, "temperature": 0}, "guards": guards}
        await ok(await http.post("/v1/configs/cfg/versions", json=config, headers=headers))
        promote = {"to": "production", "expected_current": None}
        await ok(await http.post("/v1/configs/cfg/versions/1/promote", json=promote, headers=headers))
        await ok(await http.post("/v1/prompts/", json={"name": "greet"}, headers=headers))
        version = {
            "kind": "chat",
            "messages": [{"role": "user", "content": "{{ question }}"}],
            "config": {"name": "cfg", "version": 1},
        }
        await ok(await http.post("/v1/prompts/greet/versions", json=version, headers=headers))
        await ok(await http.post("/v1/prompts/greet/versions/1/promote", json=promote, headers=headers))
        await ok(await http.patch("/v1/prompts/greet", json={"store_io": True}, headers=headers))
        settings = {"enabled": True, "threshold": 0.8}
        await ok(await http.put("/v1/prompts/greet/semantic-cache", json=settings, headers=headers))

    async def ask(self, question: str, *, headers: dict[str, str] | None = None) -> httpx.Response:
        body = {"variables": {"question": question}}
        return await self.http.post("/v1/prompts/greet/complete", json=body, headers=headers or self.headers)

    def backend_calls(self) -> int:
        return len(self.fault.seen(self.model, CHAT))

    async def lookups(self) -> dict[str, float]:
        found = {}
        for line in (await self.http.get("/metrics")).text.splitlines():
            if line.startswith("registry_semantic_cache_lookups_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                found[outcome] = float(line.rsplit(" ", 1)[1])
        return found


async def kept_texts(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT text FROM semantic_cache_entries ORDER BY id"))
        return [row[0] for row in rows.all()]


@pytest.fixture
async def guarded(
    registry: RegistryFactory, settings: Settings, fault: FaultServer, vllm_embeddings_url: str
) -> Guarded:
    headers = await make_key_on(settings)
    http = await semantic_registry(registry, fault, vllm_embeddings_url)
    return Guarded(http, headers, fault)


# -- guards


async def test_an_input_guard_blocks_before_the_semantic_cache_is_looked_up(guarded: Guarded) -> None:
    blocks_change = {"name": "no-change", "kind": "deny_patterns", "patterns": ["change"], "on": "input"}
    await guarded.publish(unique("ok"), [blocks_change])

    first = await guarded.ask(QUESTION)
    reworded = await guarded.ask(REWORDED)  # a hit (0.87) were it looked up

    assert first.status_code == 200, first.text
    assert reworded.status_code == 422
    assert problem(reworded)["type"] == "/problems/content_blocked"
    assert await guarded.lookups() == {"miss": 1.0}
    assert guarded.backend_calls() == 1


async def test_an_output_guard_applies_to_a_cached_answer_whole_and_streamed(
    guarded: Guarded, clean_database: AsyncEngine
) -> None:
    """An answer kept while the guards let it through (a classifier since changed, say) is screened again."""
    await guarded.publish(unique("ok"), [FORBIDDEN])
    assert (await guarded.ask(QUESTION)).status_code == 200
    async with clean_database.begin() as connection:
        await connection.execute(text("UPDATE semantic_cache_entries SET text = 'the secret code is 42'"))

    whole = await guarded.ask(REWORDED)
    body = {"variables": {"question": REWORDED}, "stream": True}
    streamed = await guarded.http.post("/v1/prompts/greet/complete", json=body, headers=guarded.headers)

    for response in (whole, streamed):
        assert response.status_code == 422, response.text
        assert problem(response)["type"] == "/problems/content_blocked"
    assert (await guarded.lookups())["hit"] == 2
    assert guarded.backend_calls() == 1


async def test_an_answer_an_output_guard_blocked_is_never_kept(guarded: Guarded, clean_database: AsyncEngine) -> None:
    await guarded.publish(f"{say('Your secret code is 42.')}/{unique('x')}", [FORBIDDEN])

    answers = [await guarded.ask(QUESTION), await guarded.ask(REWORDED)]
    body = {"variables": {"question": QUESTION}, "stream": True}
    async with guarded.http.stream("POST", "/v1/prompts/greet/complete", json=body, headers=guarded.headers) as sent:
        events = parse_sse("".join([chunk async for chunk in sent.aiter_text()]))

    assert [a.status_code for a in answers] == [422, 422]
    assert events[-1][0] == "error"
    assert guarded.backend_calls() == 3
    assert await kept_texts(clean_database) == []


async def test_an_answer_an_output_guard_redacted_is_kept_and_served_redacted(
    guarded: Guarded, clean_database: AsyncEngine
) -> None:
    redact_pii = {"name": "pii-out", "kind": "pii", "on": "output", "action": "redact"}
    await guarded.publish(f"{say('Write to ada@example.com today.')}/{unique('x')}", [redact_pii])

    first = (await guarded.ask(QUESTION)).json()
    reworded = (await guarded.ask(REWORDED)).json()

    assert "ada@example.com" not in first["text"]
    assert "[EMAIL]" in first["text"]
    assert (reworded["cached"], reworded["text"]) == ("semantic", first["text"])
    assert await kept_texts(clean_database) == [first["text"]]
    assert guarded.backend_calls() == 1


# -- budgets


async def test_a_hit_costs_no_tokens_and_a_key_over_its_budget_is_refused_before_a_lookup(
    guarded: Guarded, make_key: KeyFactory
) -> None:
    await guarded.publish(unique("ok"), [])
    app_key = await make_key(Scope.READ, name="app")
    key_id = (await guarded.http.get("/v1/keys/", headers=guarded.headers)).json()["items"][-1]["id"]
    budget_url = f"/v1/keys/{key_id}/budget"
    assert (await guarded.http.put(budget_url, json={"monthly_tokens": 1000}, headers=guarded.headers)).is_success

    miss = (await guarded.ask(QUESTION, headers=app_key)).json()
    hit = (await guarded.ask(REWORDED, headers=app_key)).json()
    used = (await guarded.http.get(budget_url, headers=guarded.headers)).json()["used_tokens"]
    await guarded.http.put(budget_url, json={"monthly_tokens": used}, headers=guarded.headers)
    refused = await guarded.ask(REWORDED, headers=app_key)

    assert (miss["cached"], hit["cached"]) == (False, "semantic")
    assert used == miss["usage"]["total_tokens"]
    assert refused.status_code == 429
    assert problem(refused)["type"] == "/problems/over_budget"
    assert await guarded.lookups() == {"miss": 1.0, "hit": 1.0}


# -- experiments


@pytest.fixture
async def routed(
    settings: Settings, clean_database: AsyncEngine, fault: FaultServer, vllm_embeddings_url: str
) -> AsyncIterator[Guarded]:
    """As ``guarded``, with the registry's own experiment router (the ``registry`` fixture replaces it)."""
    update = {"backends": embedding_backends(fault, vllm_embeddings_url), **SEMANTIC_SETTINGS}
    headers = await make_key_on(settings)
    with serve_in_thread(create_app(settings.model_copy(update=update))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            yield Guarded(http, headers, fault)


async def test_in_an_experiment_a_hit_stays_within_its_variants_config_and_the_exposure_is_recorded(
    routed: Guarded,
) -> None:
    """The variants run one prompt version on two config versions: a unit is answered from the cache only with
    answers of its own variant's config, and its exposure is recorded whether the cache answered or not."""
    guarded = routed
    await guarded.publish(unique("ok"), [])
    http, headers = guarded.http, guarded.headers
    other = {"backend": "fault", "model": guarded.model, "params": {"max_tokens": 50, "temperature": 0}}
    assert (await http.post("/v1/configs/", json={"name": "other"}, headers=headers)).status_code == 201
    assert (await http.post("/v1/configs/other/versions", json=other, headers=headers)).status_code == 201
    metric = {"key": "hit", "kind": "binomial", "source": "completions", "source_field": "semantic_cache_hit"}
    assert (await http.post("/v1/metrics", json=metric, headers=headers)).status_code == 201
    experiment = {
        "key": "configs",
        "prompt": "greet",
        "variants": [
            {"key": "c", "prompt_version": 1},
            {"key": "t", "prompt_version": 1, "config": {"name": "other", "version": 1}},
        ],
        "primary_metric": "hit",
    }
    created = await http.post("/v1/experiments", json=experiment, headers=headers)
    assert created.status_code == 201, created.text
    assert (await http.post("/v1/experiments/configs/start", headers=headers)).status_code in (200, 201)
    for _ in range(250):  # the router loads the started experiment on its own
        body = {"variables": {"question": "x"}, "unit": "probe"}
        if (await http.post("/v1/prompts/greet/render", json=body, headers=headers)).json()["experiment"]:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the experiment never routed")

    ask = functools.partial(ask_as, http, headers)
    units = [f"u-{i}" for i in range(12)]  # hashed into the variants (forced units record no exposure)
    answers = [await ask(QUESTION if i == 0 else REWORDED, unit) for i, unit in enumerate(units)]
    held = [(await http.get(f"/v1/units/{unit}", headers=headers)).json() for unit in units]

    variants = [a["experiment"]["variant"] for a in answers]
    assert set(variants) == {"c", "t"}
    # The first request of each variant goes to the model; the later ones are answered from that variant's.
    expected = [False if variants.index(v) == i else "semantic" for i, v in enumerate(variants)]
    assert [a["cached"] for a in answers] == expected
    assert all(a["config"]["name"] == ("cfg" if a["experiment"]["variant"] == "c" else "other") for a in answers)
    assert [len(u["exposures"]) + u["pending_exposures"] for u in held] == [1] * len(units)
    assert guarded.backend_calls() == 2


# -- the OpenAI-compatible door


async def test_a_semantic_hit_streams_through_the_openai_door_with_its_facts(guarded: Guarded) -> None:
    await guarded.publish(unique("ok"), [])
    http, headers = guarded.http, guarded.headers

    def request(question: str, *, stream: bool) -> dict[str, Any]:
        return {"model": "prompt:greet", "messages": [], "variables": {"question": question}, "stream": stream}

    first = await http.post("/v1/chat/completions", json=request(QUESTION, stream=False), headers=headers)
    async with http.stream(
        "POST", "/v1/chat/completions", json=request(REWORDED, stream=True), headers=headers
    ) as sent:
        cached_header = sent.headers["x-registry-cached"]
        lines = [line async for line in sent.aiter_lines() if line.startswith("data: ")]
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines if line != "data: [DONE]"]

    assert first.status_code == 200, first.text
    assert first.json()["registry"]["cached"] is False
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == first.json()["choices"][0]["message"]["content"]
    facts = chunks[-1]["registry"]
    assert facts["cached"] == "semantic"
    assert facts["similarity"] >= 0.8
    assert cached_header == "semantic"  # as the registry field says
    assert lines[-1] == "data: [DONE]"
    assert guarded.backend_calls() == 1


async def test_the_openai_doors_cached_header_says_semantic_on_a_semantic_hit(guarded: Guarded) -> None:
    await guarded.publish(unique("ok"), [])
    http, headers = guarded.http, guarded.headers

    def request(question: str) -> dict[str, Any]:
        return {"model": "prompt:greet", "messages": [], "variables": {"question": question}}

    first = await http.post("/v1/chat/completions", json=request(QUESTION), headers=headers)
    hit = await http.post("/v1/chat/completions", json=request(REWORDED), headers=headers)

    assert first.headers["x-registry-cached"] == "false"
    assert hit.json()["registry"]["cached"] == "semantic"
    assert hit.headers["x-registry-cached"] == "semantic"
    assert guarded.backend_calls() == 1


# -- personal data


async def test_an_answer_to_a_request_holding_personal_data_is_never_kept(
    guarded: Guarded, clean_database: AsyncEngine
) -> None:
    """It would answer another unit's similar request: what reached one person could reach another."""
    await guarded.publish(unique("ok"), [])

    personal = await guarded.ask(f"{QUESTION} I am carol@example.com")
    personal_again = await guarded.ask(f"{QUESTION} I am carol@example.com")
    plain = await guarded.ask(QUESTION)
    reworded = await guarded.ask(REWORDED)

    cached = [r.json()["cached"] for r in (personal, personal_again, plain, reworded)]
    assert cached == [False, False, False, "semantic"]
    assert len(await kept_texts(clean_database)) == 1  # the plain question's answer only
    assert guarded.backend_calls() == 3
    skips = [line for line in (await guarded.http.get("/metrics")).text.splitlines() if "store_skips_total{" in line]
    assert skips == ['registry_semantic_cache_store_skips_total{reason="personal_data"} 2.0']
