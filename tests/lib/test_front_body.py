"""How a fast path reads a body: bounded in size and in memory, and handed on whole when it refuses it."""

from __future__ import annotations

import tracemalloc
from typing import Any

from registry.lib.front import read_body


def one_byte_messages(count: int, then: list[dict[str, Any]] | None = None) -> Any:
    """``receive`` for a body of ``count`` bytes sent one byte a message, then the messages of ``then``."""
    sent = 0
    after = list(then or [])

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent == count:
            return after.pop(0)
        sent += 1
        return {"type": "http.request", "body": b"x", "more_body": sent < count or bool(then)}

    return receive


async def test_a_body_trickled_one_byte_a_message_is_held_as_its_bytes() -> None:
    count = 20_000
    tracemalloc.start()
    try:
        body, handoff = await read_body(one_byte_messages(count), max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (body, handoff) == (b"x" * count, None)
    assert peak < 20 * count  # kept as messages, each byte held a few hundred


async def test_a_body_over_the_limit_is_handed_on_with_what_was_read_then_the_rest() -> None:
    rest = [{"type": "http.request", "body": b"yz", "more_body": False}]
    body, handoff = await read_body(one_byte_messages(6, then=rest), max_bytes=5)

    assert body is None
    assert handoff is not None
    assert await handoff() == {"type": "http.request", "body": b"xxxxxx", "more_body": True}
    assert await handoff() == rest[0]


async def test_a_client_gone_mid_body_is_handed_on_with_what_was_read_then_its_disconnect() -> None:
    gone = {"type": "http.disconnect"}
    body, handoff = await read_body(one_byte_messages(3, then=[gone]), max_bytes=5)

    assert body is None
    assert handoff is not None
    assert await handoff() == {"type": "http.request", "body": b"xxx", "more_body": True}
    assert await handoff() == gone
