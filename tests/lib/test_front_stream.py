"""How a fast path sends a stream (``registry.lib.front.send_stream``): its end leaves with its last part."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from registry.lib.disconnect import DisconnectWatch
from registry.lib.front import send_stream


class LoopTurns:
    """Counts the event loop's turns: a callback that schedules itself again runs once per turn."""

    def __init__(self) -> None:
        self.count = 0
        self._running = True
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        if self._running:
            self.count += 1
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._running = False


async def idle_receive() -> dict[str, Any]:
    await asyncio.Event().wait()  # the client stays: no disconnect
    raise AssertionError("unreachable")


async def parts(count: int) -> AsyncIterator[bytes]:
    for index in range(count):
        await asyncio.sleep(0)  # a read that waits for the next token
        yield f"part {index}\n".encode()


async def test_the_body_s_end_is_sent_in_the_turn_of_the_event_loop_that_sent_the_last_part() -> None:
    """Under load every stream's token shares a turn: an end sent a turn later waits for all of them."""
    turns = LoopTurns()
    sent: list[tuple[bytes, bool, int]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append((message["body"], message["more_body"], turns.count))

    watch = DisconnectWatch(idle_receive)
    try:
        await send_stream(send, watch, [], b"first\n", parts(3))
    finally:
        turns.stop()

    assert [(body, more) for body, more, _ in sent] == [
        (b"first\n", True),
        (b"part 0\n", True),
        (b"part 1\n", True),
        (b"part 2\n", True),
        (b"", False),
    ]
    (*_, (_, _, last_part_turn), (_, _, end_turn)) = sent
    assert end_turn == last_part_turn


async def test_a_client_gone_mid_stream_ends_it_quietly_and_closes_its_source() -> None:
    gone = asyncio.Event()
    closed = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                await asyncio.sleep(0)
                yield b"part\n"
        finally:
            closed.set()

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 5:
            gone.set()

    async def request() -> None:
        await send_stream(send, DisconnectWatch(receive), [], b"first\n", endless())

    await asyncio.create_task(request())  # returns: the cancellation was the watch's, taken back

    assert closed.is_set()
    assert all(message.get("more_body", True) for message in sent)  # no end was sent: nobody to send it to
