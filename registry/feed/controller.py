from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.response import ServerSentEvent, ServerSentEventMessage

from registry.auth.keys import Scope
from registry.db.base import utcnow
from registry.runtime import Runtime


async def feed_messages(runtime: Runtime) -> AsyncIterator[ServerSentEventMessage]:
    hub = runtime.feed
    listener = hub.listen()
    heartbeat = runtime.settings.feed_heartbeat_seconds
    try:
        yield ServerSentEventMessage(event="hello", data=json.dumps({"at": utcnow().isoformat()}), retry=1000)
        while True:
            try:
                item = await asyncio.wait_for(listener.queue.get(), timeout=heartbeat)
            except TimeoutError:
                yield ServerSentEventMessage(comment="keep-alive", data=None)
                continue
            if item.reset:
                yield ServerSentEventMessage(event="reset", data="{}")
            elif item.change is None:
                return
            else:
                change = item.change
                yield ServerSentEventMessage(
                    event="change", data=json.dumps({"kind": change.kind, "name": change.name, "action": change.action})
                )
    finally:
        hub.forget(listener)


class ChangeFeedController(Controller):
    path = "/changes"
    tags = ["change feed"]

    @get(
        "/",
        opt={"scope": Scope.READ},
        operation_id="changeFeed",
        summary="Server-sent events: which prompts, configs and experiments changed",
        description=(
            "Events: `hello` on connect; `change` with `{kind, name, action}`; `reset` when changes may have been "
            "missed (drop every cached copy). A comment is sent every `REGISTRY_FEED_HEARTBEAT_SECONDS`."
        ),
        responses={200: ResponseSpec(None, media_type="text/event-stream", description="An endless event stream.")},
    )
    async def changes(self, runtime: NamedDependency[Runtime]) -> ServerSentEvent:
        return ServerSentEvent(feed_messages(runtime), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
