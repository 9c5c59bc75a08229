"""Server-sent events, parsed line by line (completion streams and the change feed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str


class SSEParser:
    """Feed it lines without their line ending; a blank line completes an event.

    Comments (``: keep-alive``) are skipped, ``id`` and ``retry`` ignored, and several
    ``data`` lines joined with newlines, as the specification says.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None

    def close(self) -> ServerSentEvent | None:
        """The last event, when the stream ended without the blank line after it."""
        return self._dispatch()

    def _dispatch(self) -> ServerSentEvent | None:
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        return ServerSentEvent(event, "\n".join(data)) if data else None
