"""Server-sent events: decoding vLLM's stream and encoding ours, as pure functions.

vLLM streams OpenAI-style chunks (``data: {json}``, a blank line, ``data: [DONE]``).
The decoder takes bytes as they arrive (no text decoding or line splitting per
token: this runs once per streamed token) and is strict: anything that is not a
well-formed chunk raises ``MalformedStreamError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

DONE = b"[DONE]"


class MalformedStreamError(ValueError):
    """The upstream stream is not valid SSE carrying OpenAI-compatible chunks."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str
    data: bytes


class SSEDecoder:
    """Turns bytes, as they arrive, into events; a blank line ends an event."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[SSEEvent]:
        return [event for block in self._blocks(data) if (event := _event(block)) is not None]

    def feed_data(self, data: bytes) -> list[bytes]:
        """The ``data`` of each event completed by ``data``, whatever its name: what a relay of chunks needs.

        A block that is one ``data: `` line (every chunk vLLM sends) is taken as it is, without
        splitting it into lines; any other is read in full, and refused as ``feed`` refuses it.
        """
        # The usual read: one whole event of one data line, nothing held from the read before (its only
        # newlines the last two, b"\n\n", not after a b"\r"). Taken without splitting; any other is split below.
        if (
            not self._buffer
            and data.find(b"\n") == len(data) - 2
            and data[-1] == 10
            and data[-3] != 13
            and data.startswith(b"data: ")
        ):
            return [data[6:-2]]
        found = []
        for block in self._blocks(data):
            if block.startswith(b"data: ") and b"\n" not in block:
                found.append(block[6:])
            elif (event := _event(block)) is not None:
                found.append(event.data)
        return found

    def _blocks(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        *blocks, self._buffer = buffer.split(b"\n\n")
        return blocks

    def close(self) -> list[SSEEvent]:
        """The last event, when the stream ended without a blank line after it."""
        block, self._buffer = self._buffer, b""
        event = _event(block.rstrip(b"\n"))
        return [] if event is None else [event]


def _event(block: bytes) -> SSEEvent | None:
    name, data = "message", []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue  # comments are keep-alives
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode(errors="replace")
        elif field not in (b"id", b"retry"):
            raise MalformedStreamError(f"not an SSE line: {line[:80]!r}")
    return SSEEvent(name, b"\n".join(data)) if data else None


def decode_events(lines: Iterable[str]) -> list[SSEEvent]:
    """Every event in a whole stream given as lines (for tests and tools)."""
    decoder = SSEDecoder()
    return [*decoder.feed("\n".join(lines).encode()), *decoder.close()]


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    text: str | None = None
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


class Chunk(msgspec.Struct, frozen=True):
    """One upstream chunk: a text delta, and on the last ones the finish reason and usage.

    A Struct rather than a dataclass: one is made per token, and a frozen dataclass costs three times as much to make.
    """

    text: str = ""
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None


def decode_chunk(data: bytes | str) -> Chunk:
    """A chunk of ``/v1/chat/completions`` (``delta.content``) or ``/v1/completions`` (``text``)."""
    try:
        chunk = _chunk_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedStreamError(f"not an OpenAI-compatible chunk: {exc}") from exc
    if chunk.error is not None:
        return Chunk(error=str(chunk.error.get("message") or chunk.error))
    choices = chunk.choices
    if len(choices) == 1:  # every chunk of one answer
        choice = choices[0]
        delta = choice.delta
        text = choice.text or (delta.content if delta is not None else None) or ""
        finish_reason = choice.finish_reason
    else:
        text, finish_reason = "", None
        for choice in choices:
            text += choice.text or (choice.delta.content if choice.delta else None) or ""
            finish_reason = choice.finish_reason or finish_reason
    usage = chunk.usage
    if usage is None:
        return Chunk(text=text, finish_reason=finish_reason)
    return Chunk(text, finish_reason, usage.prompt_tokens, usage.completion_tokens)


_encoder = msgspec.json.Encoder()


def encode_event(event: str, data: Any) -> bytes:
    """One event of our own stream: ``event: NAME`` and a JSON ``data`` line."""
    return b"event: " + event.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


_DELTA = b'event: delta\ndata: {"text":'


def encode_delta(text: str) -> bytes:
    """``encode_event("delta", DeltaEvent(text=text))`` with only the text encoded: one is sent per upstream read."""
    return _DELTA + _encoder.encode(text) + b"}\n\n"
