"""A read of the upstream body that is only a blank line, with nothing held from the reads before.

A backend (or a proxy in front of it) may end an event with extra blank lines, and the body may be read
so that ``\\n\\n`` arrives alone. SSE says an empty block is no event; the completion must go on.
"""

from __future__ import annotations

import pytest

from registry.completions.sse import ChunkReader

CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'


@pytest.mark.xfail(
    strict=True,
    raises=IndexError,
    reason="SSEDecoder.feed_data's one-event shortcut reads data[-3] of a two-byte read (registry/completions/sse.py)",
)
def test_a_read_that_is_only_a_blank_line_is_no_event() -> None:
    reader = ChunkReader()

    texts = [reader.read(CHUNK), reader.read(b"\n\n"), reader.read(CHUNK), reader.read(b"data: [DONE]\n\n")]

    assert texts == ["Hi", "", "Hi", ""]
    assert reader.done
