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
        splitting it into lines; any other is read in full, and refused as ``feed`` refuses it. The usual
        read, one whole chunk, does not come here: ``ChunkReader.read`` decodes it in place.
        """
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


# What a chunk is decoded into, once per token. ``gc=False``: the garbage collector does not track them (a fifth
# of the decode's time); decoded from JSON, they can hold no reference cycle.
class _Delta(msgspec.Struct, gc=False):
    content: str | None = None


class _Choice(msgspec.Struct, gc=False):
    text: str | None = None
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_chunk_decode = _chunk_decoder.decode


class ChunkReader(SSEDecoder):
    """One upstream stream's chunks, read by read: the text each read brings, and what the chunks say besides.

    Kept here as they come: the finish reason, the token counts and whether ``[DONE]`` has come. The events of one
    read leave as one text: a backend (or a registry) that falls behind catches up with fewer, larger writes to the
    caller instead of one per token. Strict: anything that is not a well-formed chunk raises
    ``MalformedStreamError``, except after text in the same read, which is returned first and the error kept in
    ``failure`` (how the bytes were split into reads must not decide what the caller sees); nothing more is read
    after a failure. Pure: the caller does the reading. ``read`` runs once per streamed token.
    """

    def __init__(self) -> None:
        super().__init__()
        self.finish_reason: str | None = None
        self.input_tokens = 0
        self.reported_output_tokens = 0  # the backend's last usage report
        self.unreported_deltas = 0  # text deltas after it
        self.done = False
        self.failure: MalformedStreamError | None = None

    @property
    def output_tokens(self) -> int:
        """Tokens generated so far: as the backend reported them, plus one per text delta since its last report.

        vLLM reports the usage in every chunk (``continuous_usage_stats``), so a completion cut short
        is counted exactly; a backend that reports it only at the end is counted by its deltas until then.
        """
        return self.reported_output_tokens + self.unreported_deltas

    def read(self, data: bytes) -> str:
        """The text of the chunks ``data`` completes: "" for none (or part of one), or for chunks without text."""
        # The usual read: one whole chunk, one data line, nothing held from the read before (its only newlines the
        # last two, not after a b"\r"): decoded in place. Anything else goes through the event reader.
        if (
            not self._buffer
            and data.startswith(b"data: {")
            and data.find(b"\n") == len(data) - 2
            and data[-1] == 10
            and data[-3] != 13
        ):
            try:  # ``_decode``, inline
                chunk = _chunk_decode(data[6:-2])
            except msgspec.DecodeError as exc:
                raise MalformedStreamError(f"not an OpenAI-compatible chunk: {exc}") from exc
            return self._take(chunk)
        return self._take_events(self.feed_data(data))

    def end(self) -> str:
        """The text of an event the body's end completes (one with no blank line after it). A stream that ended
        without ``[DONE]`` is malformed: that is raised, or kept in ``failure`` behind the text returned."""
        last = self.close()
        text = self._take_events([event.data for event in last]) if last else ""
        if not self.done and self.failure is None:
            self.failure = MalformedStreamError("the stream ended without [DONE]")
        if not text and self.failure is not None:
            raise self.failure
        return text

    def _take_events(self, events: list[bytes]) -> str:
        texts: list[str] = []
        for data in events:
            if data == DONE:
                self.done = True
                break
            try:
                texts.append(self._take(_decode(data)))
            except MalformedStreamError as exc:
                if not any(texts):
                    raise
                self.failure = exc
                break
        return texts[0] if len(texts) == 1 else "".join(texts)

    def _take(self, chunk: _Chunk) -> str:
        """A chunk of ``/v1/chat/completions`` (``delta.content``) or ``/v1/completions`` (``text``): its text."""
        if chunk.error is not None:
            raise MalformedStreamError(f"error in stream: {chunk.error.get('message') or chunk.error}")
        choices = chunk.choices
        if len(choices) == 1:  # every chunk of one answer
            choice = choices[0]
            delta = choice.delta
            text = choice.text or (delta.content if delta is not None else None) or ""
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        else:
            text = ""
            for choice in choices:
                text += choice.text or (choice.delta.content if choice.delta else None) or ""
                if choice.finish_reason:
                    self.finish_reason = choice.finish_reason
        usage = chunk.usage
        if usage is not None:
            self.input_tokens = usage.prompt_tokens
            self.reported_output_tokens = usage.completion_tokens
            self.unreported_deltas = 0
        elif text:
            self.unreported_deltas += 1
        return text


def _decode(data: bytes) -> _Chunk:
    try:
        return _chunk_decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedStreamError(f"not an OpenAI-compatible chunk: {exc}") from exc


_encoder = msgspec.json.Encoder()


def encode_event(event: str, data: Any) -> bytes:
    """One event of our own stream: ``event: NAME`` and a JSON ``data`` line."""
    return b"event: " + event.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


_DELTA = b'event: delta\ndata: {"text":'


def encode_delta(text: str) -> bytes:
    """``encode_event("delta", DeltaEvent(text=text))`` with only the text encoded: one is sent per upstream read."""
    return _DELTA + _encoder.encode(text) + b"}\n\n"
