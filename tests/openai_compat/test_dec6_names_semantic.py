"""Two chat requests told apart only by their participants' names never share a semantic cache answer.

The model reads a message's ``name`` (a model that addresses its user by name answers Ada and Grace differently),
so the text the cache embeds shows the names and a named request's candidates are those of the same names. The
registry embeds with the real all-MiniLM-L6-v2 (``vllm_embeddings_url``); the prompt's threshold is 0.8.
"""

from __future__ import annotations

from typing import Any

from tests.completions.conftest import unique
from tests.completions.fault_server import CHAT
from tests.completions.test_semantic_cache_seams import QUESTION, REWORDED, Guarded, guarded, kept_texts

__all__ = ["guarded"]


def asked(question: str, name: str | None) -> dict[str, Any]:
    turn: dict[str, Any] = {"role": "user", "content": "Please answer me."}
    if name is not None:
        turn["name"] = name
    return {"model": "prompt:greet", "messages": [turn], "variables": {"question": question}}


async def test_requests_differing_only_in_names_are_each_answered_by_the_model(guarded: Guarded) -> None:
    await guarded.publish(unique("ok"), [])
    http, headers = guarded.http, guarded.headers

    cached = []
    for question, name in ((QUESTION, "ada"), (QUESTION, "grace"), (QUESTION, None), (REWORDED, "ada")):
        answered = await http.post("/v1/chat/completions", json=asked(question, name), headers=headers)
        assert answered.status_code == 200, answered.text
        cached.append(answered.json()["registry"]["cached"])

    # Grace and the unnamed caller are not served Ada's answer; Ada's reworded question is (same names).
    assert cached == [False, False, False, "semantic"]
    sent = [seen.payload["messages"][-1].get("name") for seen in guarded.fault.seen(guarded.model, CHAT)]
    assert sent == ["ada", "grace", None]


async def test_an_answer_to_a_request_with_personal_data_in_a_name_is_never_kept(
    guarded: Guarded, clean_database: Any
) -> None:
    """The cache may answer another unit: a request whose name holds an e-mail address keeps no answer."""
    await guarded.publish(unique("ok"), [])
    http, headers = guarded.http, guarded.headers

    for _ in range(2):
        answered = await http.post(
            "/v1/chat/completions", json=asked(QUESTION, "jane.doe@example.com"), headers=headers
        )
        assert answered.status_code == 200, answered.text
        assert answered.json()["registry"]["cached"] is False

    assert await kept_texts(clean_database) == []
    assert guarded.backend_calls() == 2
