"""What a receiver answers is stored in the delivery log as text PostgreSQL can hold.

A receiver's error answer holding a NUL failed the transaction that records a round's outcomes: every delivery of
the round, the ones that succeeded too, stayed as it was and was sent again each time its lease ended.
"""

from __future__ import annotations

from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.runtime import Runtime
from tests.api import Client, Headers
from tests.conftest import serve_in_process
from tests.webhooks.conftest import Receiver


async def test_a_receivers_answer_holding_a_nul_is_logged_with_u_fffd_and_the_rounds_outcomes_are_kept(
    app: Litestar, admin: Headers, receiver: Receiver, clean_database: AsyncEngine
) -> None:
    receiver.script = [500]  # the round's first request; the other gets 200
    receiver.failure_body = b"bad\x00answer"
    runtime: Runtime = app.state.runtime
    async with serve_in_process(app) as client:
        hooks = [await subscribe(client, admin, receiver.url) for _ in range(2)]
        for hook in hooks:
            assert (await client.post(f"/v1/webhooks/{hook}/ping", headers=admin)).status_code == 202
        await runtime.webhooks.run_once()
        await runtime.webhooks.run_once()  # nothing is due again: no delivery is sent twice
        logs = [(await client.get(f"/v1/webhooks/{hook}/deliveries", headers=admin)).json()["items"] for hook in hooks]

    outcomes = sorted((d["status"], d["attempts"], d["last_status_code"], d["last_error"]) for log in logs for d in log)
    assert outcomes == [("retrying", 1, 500, "HTTP 500: bad\ufffdanswer"), ("succeeded", 1, 200, None)]
    assert len(receiver.received) == 2


async def subscribe(client: Client, admin: Headers, url: str) -> int:
    response = await client.post("/v1/webhooks", json={"url": url, "events": ["*"]}, headers=admin)
    assert response.status_code == 201, response.text
    webhook_id: int = response.json()["webhook"]["id"]
    return webhook_id
