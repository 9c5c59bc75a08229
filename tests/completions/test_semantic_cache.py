"""The semantic cache's hit and miss rules end to end, with a real embedding model.

Embeddings come from a real vLLM on the CPU serving all-MiniLM-L6-v2 (``vllm_embeddings_url``); completions
from the stand-in backend, which counts the requests that reached it. The rules run on PostgreSQL and on
the embedded default (SQLite without Redis).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from registry.completions.observations import CompletionSource
from registry.completions.similarity import pack, request_text, similarity, unpack
from registry.db import migrate
from registry.experiments.sources import MetricSource
from registry.settings import Settings
from tests.completions.conftest import EMBEDDING_MODEL, RegistryFactory, backend, parse_sse, publish, unique, until
from tests.completions.fault_server import CHAT, FaultServer
from tests.conftest import make_key_on

PAIRS = json.loads((Path(__file__).parent / "data" / "semantic_cache_pairs.json").read_text())
DETERMINISTIC = {"max_tokens": 8, "temperature": 0}
QUESTION = "How do I reset my password?"
REWORDED = "How can I change my password?"  # 0.87 from QUESTION with all-MiniLM-L6-v2
UNRELATED = "What is the capital of Australia?"

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


# -- the rules, with the real embedding model, on PostgreSQL and SQLite

Ask = Callable[..., Awaitable[dict[str, Any]]]


class Stage:
    """A registry with one prompt (``{{ question }}``, with ``lang`` that must match exactly) on the stand-in
    backend, embeddings from the real model."""

    def __init__(self, http: httpx.AsyncClient, headers: dict[str, str], fault: FaultServer, model: str) -> None:
        self.http = http
        self.headers = headers
        self.fault = fault
        self.model = model

    async def ask(self, question: str, *, lang: str = "en", stream: bool = False, **extra: Any) -> dict[str, Any]:
        body = {"variables": {"question": question, "lang": lang}, "stream": stream, **extra}
        if not stream:
            response = await self.http.post("/v1/prompts/greet/complete", json=body, headers=self.headers)
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer
        async with self.http.stream("POST", "/v1/prompts/greet/complete", json=body, headers=self.headers) as sent:
            events = parse_sse("".join([chunk async for chunk in sent.aiter_text()]))
        return {"events": events, **events[0][1]}

    def backend_calls(self) -> int:
        return len(self.fault.seen(self.model, CHAT))

    async def enable(self, **settings: Any) -> None:
        response = await self.http.put(
            "/v1/prompts/greet/semantic-cache",
            json={"enabled": True, "exact_variables": ["lang"], **settings},
            headers=self.headers,
        )
        assert response.status_code == 200, response.text

    async def metric(self, outcome: str) -> float:
        for line in (await self.http.get("/metrics")).text.splitlines():
            if line.startswith(f'registry_semantic_cache_lookups_total{{outcome="{outcome}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def usage(self, engine: AsyncEngine) -> list[tuple[Any, ...]]:
        assert (await self.http.get("/v1/usage", headers=self.headers)).status_code == 200
        query = text("SELECT prompt_version, cached, cache_similarity FROM completions ORDER BY id")
        async with engine.connect() as connection:
            return [tuple(row) for row in (await connection.execute(query)).all()]


TEMPLATE = "{% if lang == 'fr' %}Réponds en français. {% endif %}{{ question }}"


@pytest.fixture(params=["postgresql", "sqlite"])
async def database(
    request: pytest.FixtureRequest, tmp_path: Path, clean_database: AsyncEngine, settings: Settings
) -> AsyncIterator[tuple[AsyncEngine, dict[str, Any]]]:
    """An engine on the database the registry uses, and the settings that point it there."""
    if request.param == "postgresql":
        yield clean_database, {}
        return
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    engine = create_async_engine(url, poolclass=NullPool)
    await migrate.upgrade(engine)
    yield engine, {"database_url": url, "redis_url": None}
    await engine.dispose()


@pytest.fixture
async def stage(
    registry: RegistryFactory,
    settings: Settings,
    fault: FaultServer,
    vllm_embeddings_url: str,
    database: tuple[AsyncEngine, dict[str, Any]],
) -> Stage:
    _, overrides = database
    headers = await make_key_on(settings.model_copy(update=overrides))
    http = await registry(
        {"fault": backend(fault.url), "embed": backend(vllm_embeddings_url, first_token_timeout=30.0)},  # type: ignore[attr-defined]
        semantic_cache_backend="embed",
        semantic_cache_model=EMBEDDING_MODEL,
        **overrides,
    )
    model = unique("ok")
    await publish(http, headers, backend="fault", model=model, params=DETERMINISTIC, template=TEMPLATE, store_io=True)
    return Stage(http, headers, fault, model)


async def test_a_reworded_request_is_answered_from_the_semantic_cache_and_recorded(
    stage: Stage, database: tuple[AsyncEngine, dict[str, Any]]
) -> None:
    await stage.enable(threshold=0.8)

    first = await stage.ask(QUESTION, unit="unit-1")
    reworded = await stage.ask(REWORDED, unit="unit-1")
    recorded = await stage.usage(database[0])  # written first
    metrics = [
        MetricSource(1, "completions", "semantic_cache_hit"),
        MetricSource(2, "completions", "cache_similarity"),
        MetricSource(3, "completions", "cached"),
    ]
    async with AsyncSession(database[0]) as session:
        observed = await CompletionSource().observations(session, ["unit-1"], metrics)

    assert first["cached"] is False
    assert "similarity" not in first
    assert reworded["cached"] == "semantic"
    assert 0.8 <= reworded["similarity"] < 1
    assert reworded["text"] == first["text"]
    assert reworded["cost"] == 0
    assert stage.backend_calls() == 1
    assert recorded == [(1, False, None), (1, True, reworded["similarity"])]
    assert (await stage.metric("miss"), await stage.metric("hit")) == (1, 1)
    assert sorted((o.metric_id, o.value) for o in observed["unit-1"]) == [
        (1, 0.0),
        (1, 1.0),
        (2, reworded["similarity"]),
        (3, 0.0),
        (3, 1.0),
    ]


async def test_a_request_below_the_threshold_goes_to_the_model(stage: Stage) -> None:
    await stage.enable(threshold=0.9)  # QUESTION and REWORDED are 0.87 apart

    await stage.ask(QUESTION)
    reworded = await stage.ask(REWORDED)
    unrelated = await stage.ask(UNRELATED)

    assert (reworded["cached"], unrelated["cached"]) == (False, False)
    assert stage.backend_calls() == 3
    assert (await stage.metric("miss"), await stage.metric("hit")) == (3, 0)


async def test_an_exact_variable_that_differs_is_a_miss(stage: Stage) -> None:
    await stage.enable(threshold=0.5)

    await stage.ask(QUESTION, lang="en")
    other_language = await stage.ask(QUESTION, lang="fr")
    same_language = await stage.ask(QUESTION, lang="fr")

    assert other_language["cached"] is False
    assert same_language["cached"] == "semantic"
    assert stage.backend_calls() == 2


async def test_a_new_version_never_gets_an_older_versions_answers(stage: Stage) -> None:
    await stage.enable(threshold=0.8)
    await stage.ask(QUESTION)
    created = await stage.http.post(
        "/v1/prompts/greet/versions",
        json={
            "kind": "chat",
            # New content that renders the same request (the embedded text folds the trailing space).
            "messages": [{"role": "user", "content": TEMPLATE + " "}],
            "config": {"name": "cfg", "version": 1},
        },
        headers=stage.headers,
    )
    assert created.status_code == 201, created.text

    on_new = await stage.ask(QUESTION, version=2)
    on_old = await stage.ask(QUESTION, version=1)

    assert (on_new["version"], on_new["cached"]) == (2, False)
    assert (on_old["version"], on_old["cached"]) == (1, "semantic")
    assert stage.backend_calls() == 2


async def test_a_semantic_hit_streams_as_a_replay(stage: Stage) -> None:
    await stage.enable(threshold=0.8)
    first = await stage.ask(QUESTION)

    streamed = await stage.ask(REWORDED, stream=True)

    assert [name for name, _ in streamed["events"]] == ["metadata", "delta", "done"]
    assert streamed["cached"] == "semantic"
    assert streamed["similarity"] >= 0.8
    assert streamed["events"][1][1]["text"] == first["text"]
    assert stage.backend_calls() == 1


async def test_a_prompt_without_the_semantic_cache_never_looks_up(stage: Stage) -> None:
    await stage.ask(QUESTION)
    again = await stage.ask(REWORDED)

    assert again["cached"] is False
    assert stage.backend_calls() == 2
    assert (await stage.metric("miss"), await stage.metric("hit")) == (0, 0)


async def test_enabling_the_semantic_cache_takes_effect_on_the_next_completion(stage: Stage) -> None:
    await stage.ask(QUESTION)  # off: the settings read as off are kept in the process

    await stage.enable(threshold=0.8)
    kept = await stage.ask(QUESTION)
    reworded = await stage.ask(REWORDED)

    assert (kept["cached"], reworded["cached"]) == (False, "semantic")
    assert stage.backend_calls() == 2
    assert (await stage.metric("miss"), await stage.metric("hit")) == (1, 1)


async def test_an_expired_answer_is_not_served(
    registry: RegistryFactory,
    settings: Settings,
    fault: FaultServer,
    vllm_embeddings_url: str,
    clean_database: AsyncEngine,
) -> None:
    headers = await make_key_on(settings)
    http = await registry(
        {"fault": backend(fault.url), "embed": backend(vllm_embeddings_url, first_token_timeout=30.0)},  # type: ignore[attr-defined]
        semantic_cache_backend="embed",
        semantic_cache_model=EMBEDDING_MODEL,
        semantic_cache_ttl_seconds=1e-6,  # past before the next request
    )
    model = unique("ok")
    await publish(http, headers, backend="fault", model=model, params=DETERMINISTIC, template=TEMPLATE, store_io=True)
    stage = Stage(http, headers, fault, model)
    await stage.enable(threshold=0.5)

    answers = [await stage.ask(QUESTION) for _ in range(2)]

    assert [a["cached"] for a in answers] == [False, False]
    assert stage.backend_calls() == 2


async def test_an_evaluation_run_is_never_answered_by_the_semantic_cache(stage: Stage) -> None:
    await stage.enable(threshold=0.5)
    await stage.ask(QUESTION)
    http, headers = stage.http, stage.headers
    assert (await http.post("/v1/evals/datasets", json={"name": "faq"}, headers=headers)).status_code == 201
    items = [{"variables": {"question": q, "lang": "en"}, "expected": "Hello"} for q in (QUESTION, REWORDED)]
    created = await http.post("/v1/evals/datasets/faq/versions", json={"items": items}, headers=headers)
    assert created.status_code == 201, created.text
    run = {"prompt": "greet", "version": 1, "dataset": {"name": "faq"}, "scorers": [{"kind": "exact_match"}]}
    started = (await http.post("/v1/evals/runs", json=run, headers=headers)).json()

    async def ended() -> bool:
        found = (await http.get(f"/v1/evals/runs/{started['id']}", headers=headers)).json()
        return found["status"] not in ("queued", "running")

    await until(ended, "the evaluation run to end", seconds=60)

    assert stage.backend_calls() == 3  # the first request, then both items
    assert (await stage.metric("miss"), await stage.metric("hit")) == (1, 0)


async def test_a_sampled_request_is_not_looked_up(stage: Stage) -> None:
    await stage.enable(threshold=0.5)
    response = await stage.http.post(
        "/v1/configs/cfg/versions",
        json={"backend": "fault", "model": stage.model, "params": {"max_tokens": 8, "temperature": 0.7}},
        headers=stage.headers,
    )
    assert response.status_code == 201, response.text
    await stage.http.post(
        "/v1/prompts/greet/versions",
        json={
            "kind": "chat",
            "messages": [{"role": "user", "content": TEMPLATE}],
            "config": {"name": "cfg", "version": 2},
        },
        headers=stage.headers,
    )

    answers = [await stage.ask(QUESTION, version=2) for _ in range(2)]

    assert [a["cached"] for a in answers] == [False, False]
    assert (await stage.metric("miss"), await stage.metric("hit")) == (0, 0)


# -- the labelled pairs, a slice, with the real model


async def test_paraphrases_from_the_labelled_pairs_hit_and_unrelated_sentences_do_not(
    stage: Stage, vllm_embeddings_url: str
) -> None:
    """Each pair in a scope of its own (``lang`` carries the pair's number): the first sentence is answered by
    the model, the second is a hit exactly when its embedding is within the threshold of the first's."""
    threshold = 0.8
    await stage.enable(threshold=threshold)
    paraphrases = [p for p in PAIRS if p["paraphrase"]][:10]
    unrelated = [p for p in PAIRS if p["kind"] == "unrelated"][:10]
    slice_ = paraphrases + unrelated
    async with httpx.AsyncClient(timeout=60) as http:
        sent = [request_text({"messages": [{"role": "user", "content": s}]}) for p in slice_ for s in (p["a"], p["b"])]
        found = await http.post(f"{vllm_embeddings_url}/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": sent})
    vectors = [unpack(pack(item["embedding"])) for item in found.json()["data"]]
    expected = [similarity(vectors[2 * i], vectors[2 * i + 1]) >= threshold for i in range(len(slice_))]

    hits = []
    for i, pair in enumerate(slice_):
        await stage.ask(pair["a"], lang=f"pair-{i}")
        hits.append((await stage.ask(pair["b"], lang=f"pair-{i}"))["cached"] == "semantic")

    assert hits == expected
    assert sum(hits[: len(paraphrases)]) >= 6  # 7 of these 10 paraphrases are 0.8 or closer
    assert sum(hits[len(paraphrases) :]) == 0
