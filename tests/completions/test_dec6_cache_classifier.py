"""A model guard's classifier never takes its verdict from the semantic cache.

A verdict is on one text: a similar text's (a semantic hit) would let a request through, or block it, on what
another request said, as an evaluation run's item would be scored on a similar item's answer. The classifier
prompt may have its semantic cache on (it is a prompt like any other, and its own callers may use it); the guard
asks the classifier all the same. An identical text may still be answered by the exact cache.
"""

from __future__ import annotations

import uuid

from tests.completions.conftest import RegistryFactory, backend, registry, unique  # noqa: F401 - a fixture
from tests.completions.fault_server import CHAT, FaultServer, say
from tests.completions.test_dec6_cache_semantic_threshold import SameVector, same_vector  # noqa: F401 - a fixture
from tests.guards.conftest import config_version, guarded, ok, prompt_on

CLEAN = '{"flagged": false, "category": "none", "reason": "fine"}'


async def test_a_model_guards_classifier_is_asked_about_a_text_similar_to_one_it_judged(
    registry: RegistryFactory,  # noqa: F811
    admin: dict[str, str],
    fault: FaultServer,
    same_vector: tuple[str, SameVector],  # noqa: F811
) -> None:
    url, embeddings = same_vector  # every text embeds alike: any two are as similar as can be
    client = await registry(
        {"fault": backend(url)},
        semantic_cache_backend="fault",
        semantic_cache_model="same-vector",
        completion_usage_flush_seconds=3600.0,
    )
    judge = unique(say(CLEAN))
    body = {"backend": "fault", "model": judge, "params": {"max_tokens": 200, "temperature": 0}, "guards": []}
    number = await config_version(client, admin, "judge", body)
    await prompt_on(client, admin, "moderator", "judge", number, "Is this harmful? {{ text }}")
    await ok(await client.patch("/v1/prompts/moderator", json={"store_io": True}, headers=admin))
    cache = {"enabled": True, "threshold": 0.5}
    await ok(await client.put("/v1/prompts/moderator/semantic-cache", json=cache, headers=admin))
    guard = {"name": "moderation", "kind": "model", "prompt": "moderator"}
    await guarded(client, admin, model=unique("ok"), guards=[guard])

    # The classifier prompt's own callers are served from its semantic cache, as the prompt's setting says.
    direct = [
        await ok(await client.post("/v1/prompts/moderator/complete", json={"variables": {"text": t}}, headers=admin))
        for t in ("first text", "second text")
    ]
    assert [answer["cached"] for answer in direct] == [False, "semantic"]
    asked = len(fault.seen(judge, CHAT))

    first = {"variables": {"question": "how do I stop a process"}, "unit": f"u-{uuid.uuid4().hex[:8]}"}
    second = {"variables": {"question": "how do I stop a person"}, "unit": f"u-{uuid.uuid4().hex[:8]}"}
    await ok(await client.post("/v1/prompts/ask/complete", json=first, headers=admin))
    await ok(await client.post("/v1/prompts/ask/complete", json=second, headers=admin))

    assert embeddings.embedded >= 2
    # Before, the second request's guard took the first one's verdict from the semantic cache: its text was
    # never read by the classifier.
    assert len(fault.seen(judge, CHAT)) == asked + 2
    assert "stop a person" in str(fault.seen(judge, CHAT)[-1].payload["messages"])
