"""Webhook URLs that parsers read differently, or that cannot be sent to, are refused; one already stored fails
its own delivery only.

Before: a host with an empty or 64-character label was a 500 (the resolver's UnicodeError), a URL with a space,
a tab or a backslash was stored (``http://127.0.0.1\\@example.com/`` was checked as example.com, and deliveries'
parser refused it), and that refusal, raised in the middle of a round, lost the outcomes of every delivery of the
round: all were sent again at each lease's end.
"""

from __future__ import annotations

from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.runtime import Runtime
from registry.webhooks.models import Webhook
from tests.api import Headers
from tests.conftest import serve_in_process
from tests.webhooks.conftest import Receiver, receiver  # noqa: F401 - the fixture, shared

REFUSED = [
    "http://a..b/",
    "http://" + "a" * 64 + ".example.com/",
    "http://127.0.0.1\\@example.com/",
    "http://ex ample.com/",
    "http://ex\tample.com/",
    "http://user:password@example.com/",  # a password listed to every admin and kept in the audit log
]


async def test_unsendable_urls_are_refused_and_a_stored_one_fails_only_its_own_delivery(
    app: Litestar,
    admin: Headers,
    receiver: Receiver,  # noqa: F811
    clean_database: AsyncEngine,
) -> None:
    runtime: Runtime = app.state.runtime
    async with serve_in_process(app) as client:
        refusals = []
        for url in REFUSED:
            response = await client.post("/v1/webhooks", json={"url": url, "events": ["*"]}, headers=admin)
            refusals.append((response.status_code, [e["field"] for e in response.json().get("errors", [])]))
        assert refusals == [(422, ["url"])] * len(REFUSED)

        good = await client.post("/v1/webhooks", json={"url": receiver.url, "events": ["*"]}, headers=admin)
        assert good.status_code == 201, good.text
        async with runtime.sessionmaker() as session, session.begin():  # stored before URLs were checked so
            bad = Webhook(
                url=receiver.url.replace("/hook", "\\@example.com/hook"),
                event_types=["*"],
                secret="whsec_x",
                created_by="x",
            )
            session.add(bad)
        hooks = [good.json()["webhook"]["id"], bad.id]
        for hook in hooks:
            assert (await client.post(f"/v1/webhooks/{hook}/ping", headers=admin)).status_code == 202
        assert await runtime.webhooks.deliver_due() == 2
        logs = [(await client.get(f"/v1/webhooks/{hook}/deliveries", headers=admin)).json()["items"] for hook in hooks]

    outcomes = [(d["status"], d["attempts"], (d["last_error"] or "")[:11]) for (d,) in logs]
    assert outcomes == [("succeeded", 1, ""), ("retrying", 1, "ValueError:")]
    assert len(receiver.received) == 1
