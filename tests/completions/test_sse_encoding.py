"""Our stream's delta events are built from the text alone; they must be the bytes the general encoder makes."""

from __future__ import annotations

import pytest

from registry.completions.schemas import DeltaEvent
from registry.completions.sse import decode_events, encode_delta, encode_event

TEXTS = [" from", "", 'a "quoted" \\ back\\slash', "two\nlines\r\n", "é ü 😀 \u2028", "\x00\x1f control"]


@pytest.mark.parametrize("text", TEXTS, ids=["plain", "empty", "quotes", "newlines", "unicode", "control"])
def test_a_delta_event_is_the_bytes_of_the_general_encoder(text: str) -> None:
    encoded = encode_delta(text)

    assert encoded == encode_event("delta", DeltaEvent(text=text))
    [event] = decode_events(encoded.decode().split("\n"))
    assert event.event == "delta"
