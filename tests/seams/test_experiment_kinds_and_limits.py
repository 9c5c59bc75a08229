"""An experiment is never the reason a request fails: its variants are of production's kind (text or chat), and a
variant's lower ``max_tokens`` caps the callers routed to it instead of refusing what production's config accepts.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import unique
from tests.completions.fault_server import FaultServer
from tests.conftest import openai_problem, problem
from tests.seams.conftest import Served, ok, rows, started_experiment
from tests.seams.test_seams_dec5 import (
    ADA,
    COMPLETE,
    config,
    one_unit_per_side,
    prompt,
    requests,
    until_routed,
)

METRIC = {"key": "converted", "kind": "binomial"}


@pytest.fixture(params=[True, False], ids=["fast-path", "litestar"])
def fast_path(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def field_errors(response: httpx.Response) -> list[tuple[str, str]]:
    assert response.status_code == 422, response.text
    found = problem(response)
    assert found["type"] == "/problems/experiment_invalid", found
    return [(e["field"], e["message"]) for e in found["errors"]]


def against_production(kind: str, production: int, production_kind: str) -> str:
    return (
        f"is a {kind} version and production (version {production}) a {production_kind} one: requests that "
        "production's callers send would be refused on it"
    )


async def test_variants_of_another_kind_than_production_are_refused_at_creation_update_and_start(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    """A text treatment of a chat prompt would answer its units' chat requests with 422 ``prompt_kind_mismatch``,
    after their exposure and before any completion is recorded: the experiment would compare different callers."""
    client = await served()
    await config(client, admin, "main", backend="fault", model=unique("ok"))
    await prompt(client, admin, "Say hello to {{ name }}.", "Greet {{ name }}.")  # chat 1 (production) and 2
    text = {"kind": "text", "template": "Greet {{ name }}.", "config": {"name": "main"}}
    await ok(await client.post("/v1/prompts/greet/versions", json=text, headers=admin))  # text 3
    await ok(await client.post("/v1/metrics", json=METRIC, headers=admin))
    control = {"key": "control", "prompt_version": 1}
    experiment = {
        "key": "kinds",
        "prompt": "greet",
        "variants": [control, {"key": "treatment", "prompt_version": 3}],
        "primary_metric": "converted",
    }

    refused = await client.post("/v1/experiments", json=experiment, headers=admin)
    assert field_errors(refused) == [("variants[1].prompt_version", against_production("text", 1, "chat"))]
    assert await rows(clean_database, "SELECT id FROM experiments") == []

    # A draft of chat variants cannot take the text version either.
    chat = {**experiment, "variants": [control, {"key": "treatment", "prompt_version": 2}]}
    await ok(await client.post("/v1/experiments", json=chat, headers=admin))
    change = {"variants": experiment["variants"]}
    refused = await client.patch("/v1/experiments/kinds", json=change, headers=admin)
    assert field_errors(refused) == [("variants[1].prompt_version", against_production("text", 1, "chat"))]
    saved = await ok(await client.get("/v1/experiments/kinds", headers=admin))
    assert [v["prompt_version"] for v in saved["variants"]] == [1, 2]

    # Production became the text version after the draft was saved: the start judges the variants again.
    promote = {"to": "production", "expected_current": 1}
    await ok(await client.post("/v1/prompts/greet/versions/3/promote", json=promote, headers=admin))
    refused = await client.post("/v1/experiments/kinds/start", headers=admin)
    assert field_errors(refused) == [
        ("variants[0].prompt_version", against_production("chat", 3, "text")),
        ("variants[1].prompt_version", against_production("chat", 3, "text")),
    ]
    assert (await ok(await client.get("/v1/experiments/kinds", headers=admin)))["status"] == "draft"


async def test_variants_of_two_kinds_are_refused_on_a_prompt_without_production(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine
) -> None:
    client = await served()
    await config(client, admin, "main", backend="fault", model=unique("ok"))
    await ok(await client.post("/v1/prompts", json={"name": "draft"}, headers=admin))
    chat = {"kind": "chat", "messages": [{"role": "user", "content": "Hi {{ name }}."}], "config": {"name": "main"}}
    text = {"kind": "text", "template": "Hi {{ name }}.", "config": {"name": "main"}}
    for version in (chat, text):
        await ok(await client.post("/v1/prompts/draft/versions", json=version, headers=admin))
    await ok(await client.post("/v1/metrics", json=METRIC, headers=admin))
    experiment = {
        "key": "two-kinds",
        "prompt": "draft",
        "variants": [{"key": "control", "prompt_version": 1}, {"key": "treatment", "prompt_version": 2}],
        "primary_metric": "converted",
    }
    refused = await client.post("/v1/experiments", json=experiment, headers=admin)
    assert field_errors(refused) == [
        (
            "variants[1].prompt_version",
            "is a text version and variant 'control' (version 1) a chat one: requests that variant 'control' runs "
            "would be refused on it",
        )
    ]
    assert await rows(clean_database, "SELECT id FROM experiments") == []


def variant_of(path: str, answered: httpx.Response) -> str:
    if path == COMPLETE:
        return str(answered.json()["experiment"]["variant"])
    return answered.headers["x-registry-variant"]


@pytest.mark.parametrize("routed_config", ["variant's config", "variant version's own config"])
async def test_a_variants_lower_max_tokens_caps_its_callers_and_only_the_addressed_versions_config_refuses(
    served: Served,
    admin: dict[str, str],
    clean_database: AsyncEngine,
    fault: FaultServer,
    fast_path: bool,
    routed_config: str,
) -> None:
    """Production's config allows 8 tokens, the treatment runs with a config that allows 5 (its variant's, or the
    one its version links): a caller asking for 6 is answered in both arms, the treatment's backend asked for 5."""
    client = await served(fast_path=fast_path)
    main, small = unique("ok"), unique("ok")
    await config(client, admin, "main", backend="fault", model=main)  # max_tokens 8
    await config(client, admin, "small", backend="fault", model=small, params={"temperature": 0, "max_tokens": 5})
    await prompt(client, admin, "Say hello to {{ name }}.")
    own = "small" if routed_config == "variant version's own config" else "main"
    version = {"kind": "chat", "messages": [{"role": "user", "content": "Greet {{ name }}."}], "config": {"name": own}}
    await ok(await client.post("/v1/prompts/greet/versions", json=version, headers=admin))
    await started_experiment(client, admin, "limits", {"name": "small", "version": 1} if own == "main" else None)
    units = await one_unit_per_side(client, admin, "limits")
    await until_routed(client, admin, units["control"])

    for side in ("treatment", "control"):
        for path, body in requests(units[side], 6):
            answered = await client.post(path, json=body, headers=admin)
            assert answered.status_code == 200, answered.text
            assert variant_of(path, answered) == side
    # Above what the addressed version's config allows: refused alike in both arms, before any backend call.
    for side in ("treatment", "control"):
        for path, body in requests(units[side], 9):
            refused = await client.post(path, json=body, headers=admin)
            assert refused.status_code == 422, refused.text
            found = problem(refused) if path == COMPLETE else openai_problem(refused)
            assert [(e["field"], e["message"]) for e in found["errors"]] == [
                ("max_tokens", "may only lower the config's max_tokens (8)")
            ]
    assert [r.payload["max_tokens"] for r in fault.seen(small, "/v1/chat/completions")] == [5, 5, 5]
    assert [r.payload["max_tokens"] for r in fault.seen(main, "/v1/chat/completions")] == [6, 6, 6]

    # Addressed by number, no experiment routes it: version 2 is judged by the config it links.
    explicit = await client.post(COMPLETE, json={"variables": ADA, "version": 2, "max_tokens": 6}, headers=admin)
    if own == "small":
        assert [(e["field"], e["message"]) for e in problem(explicit)["errors"]] == [
            ("max_tokens", "may only lower the config's max_tokens (5)")
        ]
    else:
        assert explicit.status_code == 200, explicit.text
        assert explicit.json()["experiment"] is None

    await ok(await client.get("/v1/usage", headers=admin))
    recorded = await rows(
        clean_database, "SELECT variant, config, status FROM completions WHERE variant IS NOT NULL ORDER BY id"
    )
    assert [(r["variant"], r["config"], r["status"]) for r in recorded] == [("treatment", "small", "ok")] * 3 + [
        ("control", "main", "ok")
    ] * 3
