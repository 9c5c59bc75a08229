from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.response import ServerSentEventMessage

from registry.auth.access import authorization_of
from registry.auth.keys import Scope
from registry.auth.principal import Principal
from registry.db.base import utcnow
from registry.lib.streaming import BoundedServerSentEvent
from registry.runtime import Runtime


async def feed_messages(runtime: Runtime, authorization: str | None, key: str) -> AsyncIterator[ServerSentEventMessage]:
    """The feed's events while its key stays valid: one revoked or expired while listening ends it at its next
    event or heartbeat, as the key check would refuse its next request (the feed is one request that lasts)."""
    hub = runtime.feed
    listener = hub.listen_for(key)
    if listener is None:
        return  # opened together with others of its key past its bound (FeedHub.admit refuses the rest)
    heartbeat = runtime.settings.feed_heartbeat_seconds
    verifier = runtime.key_verifier
    try:
        yield ServerSentEventMessage(event="hello", data=json.dumps({"at": utcnow().isoformat()}), retry=1000)
        while True:
            try:
                item = await asyncio.wait_for(listener.queue.get(), timeout=heartbeat)
            except TimeoutError:
                if not await verifier.still_valid(authorization):
                    return
                yield ServerSentEventMessage(comment="keep-alive", data=None)
                continue
            if not await verifier.still_valid(authorization):
                return
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
            "missed (drop every cached copy). A comment is sent every `REGISTRY_FEED_HEARTBEAT_SECONDS`. The "
            "feed ends when its key is revoked or expires."
        ),
        responses={200: ResponseSpec(None, media_type="text/event-stream", description="An endless event stream.")},
    )
    async def changes(
        self, request: Request[Principal, Any, Any], runtime: NamedDependency[Runtime]
    ) -> BoundedServerSentEvent:
        runtime.feed.admit(request.user.public_id)
        messages = feed_messages(runtime, authorization_of(request.scope["headers"]), request.user.public_id)
        # A subscriber that stops reading ends its feed after ``stream_send_timeout_seconds`` (its listener freed).
        return BoundedServerSentEvent(messages, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
