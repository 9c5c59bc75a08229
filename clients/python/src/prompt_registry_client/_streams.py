"""Streamed completions: iterate for typed events; ``text``, ``metadata`` and ``done`` fill in as they arrive."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from types import TracebackType

import httpx

from prompt_registry_client._core import stream_event
from prompt_registry_client._errors import ServiceUnavailable
from prompt_registry_client._models import CompletionDone, CompletionEvent, CompletionMetadata, TextDelta
from prompt_registry_client._sse import SSEParser


class _StreamState:
    def __init__(self) -> None:
        self._parser = SSEParser()
        self._parts: list[str] = []
        self.metadata: CompletionMetadata | None = None
        self.done: CompletionDone | None = None

    def on_line(self, line: str) -> CompletionEvent | None:
        event = self._parser.feed(line)
        return self._apply(stream_event(event)) if event is not None else None

    def on_end(self) -> CompletionEvent | None:
        event = self._parser.close()
        return self._apply(stream_event(event)) if event is not None else None

    def _apply(self, event: CompletionEvent | None) -> CompletionEvent | None:
        if isinstance(event, TextDelta):
            self._parts.append(event.text)
        elif isinstance(event, CompletionMetadata):
            self.metadata = event
        elif isinstance(event, CompletionDone):
            self.done = event
        return event

    @property
    def text(self) -> str:
        return "".join(self._parts)


def _broken(exc: httpx.HTTPError) -> ServiceUnavailable:
    return ServiceUnavailable(f"the completion stream broke off: {exc!r}")


class _Stream:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._state = _StreamState()

    @property
    def metadata(self) -> CompletionMetadata | None:
        """The first event: which prompt version and config run (None until it arrives)."""
        return self._state.metadata

    @property
    def done(self) -> CompletionDone | None:
        """The last event: finish reason, usage and cost (None until it arrives)."""
        return self._state.done

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._state.text


class CompletionStream(_Stream):
    """A completion as it is generated: ``CompletionMetadata``, ``TextDelta``s, then ``CompletionDone``.

    An ``error`` event raises its typed error. Use it in a ``with`` block (or call
    ``close()``) so the connection is released if you stop early.

    Example::

        with registry.complete("greet", {"name": "Ada"}, stream=True) as stream:
            for event in stream:
                if isinstance(event, TextDelta):
                    print(event.text, end="", flush=True)
        print(stream.done.usage if stream.done else "no usage")
    """

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response)
        self._events = self._iterate()

    def __iter__(self) -> Iterator[CompletionEvent]:
        return self._events

    def __next__(self) -> CompletionEvent:
        return next(self._events)

    def _iterate(self) -> Generator[CompletionEvent, None, None]:
        try:
            for line in self._response.iter_lines():
                event = self._state.on_line(line)
                if event is not None:
                    yield event
            last = self._state.on_end()
            if last is not None:
                yield last
        except httpx.HTTPError as exc:  # broke off, or could not be decoded
            raise _broken(exc) from exc
        finally:
            self._response.close()

    def close(self) -> None:
        self._events.close()
        self._response.close()

    def __enter__(self) -> CompletionStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class AsyncCompletionStream(_Stream):
    """``CompletionStream`` for the async client: ``async for event in stream``."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response)
        self._events = self._iterate()

    def __aiter__(self) -> AsyncIterator[CompletionEvent]:
        return self._events

    async def __anext__(self) -> CompletionEvent:
        return await anext(self._events)

    async def _iterate(self) -> AsyncGenerator[CompletionEvent, None]:
        try:
            async for line in self._response.aiter_lines():
                event = self._state.on_line(line)
                if event is not None:
                    yield event
            last = self._state.on_end()
            if last is not None:
                yield last
        except httpx.HTTPError as exc:  # broke off, or could not be decoded
            raise _broken(exc) from exc
        finally:
            await self._response.aclose()

    async def aclose(self) -> None:
        await self._events.aclose()
        await self._response.aclose()

    async def __aenter__(self) -> AsyncCompletionStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()
