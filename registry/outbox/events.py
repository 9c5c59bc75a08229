"""Record domain events in the outbox, inside the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.principal import Actor
from registry.outbox.models import OutboxEvent

EVENT_TYPES = (
    "prompt.version.created",
    "prompt.promoted",
    "prompt.rolled_back",
    "config.version.created",
    "config.promoted",
    "config.rolled_back",
    "experiment.started",
    "experiment.stopped",
    "rollout.started",
    "rollout.paused",
    "rollout.resumed",
    "rollout.advanced",
    "rollout.aborted",
    "rollout.rolled_back",
    "rollout.completed",
    "alert.firing",
    "alert.resolved",
)


async def emit_event(session: AsyncSession, event_type: str, subject: str, data: dict[str, Any], actor: Actor) -> None:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    session.add(
        OutboxEvent(event_id=str(uuid.uuid4()), type=event_type, subject=subject, payload=data, actor=actor.name)
    )
    await session.flush()
