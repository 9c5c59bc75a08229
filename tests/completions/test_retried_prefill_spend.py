"""An attempt that a backend took and reported its prompt for, then closed before the first token, is retried; what
it reported spending is charged with the rest of the request, whether a retry answers or every attempt fails.

Backend ``flaky`` (one retry) runs a stand-in that, for a model ``prefill-reset:N/...``, answers its first N requests
with a first chunk that reports the prompt (vLLM's continuous usage) and then drops the connection, and answers the
rest in full. The key's budget, the usage record and ``registry_completion_tokens_total`` must count every prefill.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.settings import Settings
from tests.completions.conftest import backend, publish, serve_in_thread, unique
from tests.completions.fault_server import CHAT, PROMPT_TOKENS, FaultServer, SeenRequest, _Reply
from tests.conftest import AppClient
from tests.experiments.conftest import runtime_of

PRICES = (1000.0, 3000.0)  # per million input and output tokens
TWO_PREFILLS_COUNTED = f'registry_completion_tokens_total{{backend="flaky",direction="input"}} {2 * PROMPT_TOKENS}.0'


def cost(input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * PRICES[0] + output_tokens * PRICES[1]) / 1e6


class PrefillResetServer(FaultServer):
    """The stand-in backend, plus ``prefill-reset:N``: the prompt reported and the connection dropped before any
    token for the first N requests of the model, then the ``ok`` answer."""

    async def _complete(self, reply: _Reply, receive: Any, seen: SeenRequest, name: str, arg: str, number: int) -> None:
        if name != "prefill-reset":
            await super()._complete(reply, receive, seen, name, arg, number)
        elif number >= int(arg):
            await super()._complete(reply, receive, seen, "ok", "", number)
        else:
            start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            await reply.send(start)
            await reply.role()  # a chat stream's first chunk: no token, the usage so far (the prompt)
            raise ConnectionResetError("injected reset after the prefill")


@pytest.fixture(scope="module")
def prefill_server() -> Iterator[tuple[PrefillResetServer, str]]:
    server = PrefillResetServer()
    with serve_in_thread(server, lifespan="off") as url:
        yield server, url


@pytest.fixture
def settings(settings: Settings, prefill_server: tuple[PrefillResetServer, str]) -> Settings:
    flaky = backend(prefill_server[1], max_retries=1, retry_base_delay=0.0, retry_max_delay=0.0)
    return settings.model_copy(update={"backends": {"flaky": flaky}, "completion_usage_flush_seconds": 3600.0})


async def spend_seen(client: AppClient, admin: dict[str, str], engine: AsyncEngine) -> dict[str, Any]:
    await runtime_of(client.app).completions.recorder.flush()
    [key] = (await client.get("/v1/keys/", headers=admin)).json()["items"]
    budget = (await client.get(f"/v1/keys/{key['id']}/budget", headers=admin)).json()
    async with engine.connect() as connection:
        query = "SELECT status, input_tokens, output_tokens, cost FROM completions"
        records = (await connection.execute(text(query))).all()
    metrics = (await client.get("/metrics")).text
    return {"budget": (budget["used_tokens"], budget["used_cost"]), "records": records, "metrics": metrics}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_retried_attempts_reported_prompt_is_charged_with_the_answer(
    client: AppClient,
    admin: dict[str, str],
    prefill_server: tuple[PrefillResetServer, str],
    clean_database: AsyncEngine,
    stream: bool,
) -> None:
    model = unique("prefill-reset:1")
    await publish(client, admin, backend="flaky", model=model, prices=PRICES)

    response = await client.post(
        "/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}, "stream": stream}, headers=admin
    )

    assert response.status_code == 200, response.text
    assert len(prefill_server[0].seen(model, CHAT)) == 2  # the attempt that failed, and the retry that answered
    seen = await spend_seen(client, admin, clean_database)
    [(status, input_tokens, output_tokens, record_cost)] = seen["records"]
    assert (status, input_tokens, output_tokens) == ("ok", 2 * PROMPT_TOKENS, 3)
    assert record_cost == pytest.approx(cost(2 * PROMPT_TOKENS, 3))
    assert seen["budget"] == (2 * PROMPT_TOKENS + 3, pytest.approx(cost(2 * PROMPT_TOKENS, 3)))
    assert TWO_PREFILLS_COUNTED in seen["metrics"]


async def test_every_failed_attempts_reported_prompt_is_charged_when_the_retries_run_out(
    client: AppClient,
    admin: dict[str, str],
    prefill_server: tuple[PrefillResetServer, str],
    clean_database: AsyncEngine,
) -> None:
    model = unique("prefill-reset:2")
    await publish(client, admin, backend="flaky", model=model, prices=PRICES)

    response = await client.post("/v1/prompts/greet/complete", json={"variables": {"name": "Ada"}}, headers=admin)

    assert response.status_code == 502, response.text
    assert len(prefill_server[0].seen(model, CHAT)) == 2  # the attempt and its retry, both dropped after the prefill
    seen = await spend_seen(client, admin, clean_database)
    [(status, input_tokens, output_tokens, record_cost)] = seen["records"]
    assert (status, input_tokens, output_tokens) == ("error", 2 * PROMPT_TOKENS, 0)
    assert record_cost == pytest.approx(cost(2 * PROMPT_TOKENS, 0))
    assert seen["budget"] == (2 * PROMPT_TOKENS, pytest.approx(cost(2 * PROMPT_TOKENS, 0)))
    assert TWO_PREFILLS_COUNTED in seen["metrics"]
