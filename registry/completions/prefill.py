"""The prompt of a completion its caller left before the backend reported any usage, counted after it left.

The backend reports usage in every chunk (``continuous_usage_stats``), so a completion left after its first chunk
is charged exactly. One left before it (during the prefill) got no report, yet the backend read the whole prompt:
recorded with no input tokens, a client that leaves every request before its first token would spend the
backend's time on a key whose budget never moves. Its prompt is counted by the backend (vLLM ``/tokenize``) once
the caller has gone, off any request's path, and only then recorded. A backend that cannot count (its breaker not
closed, or the count failing) leaves the record without input tokens, as before, and says so in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from registry.completions.errors import UpstreamError
from registry.completions.policy import BreakerStatus
from registry.completions.upstream import Backend, UpstreamClient

logger = structlog.get_logger("registry.completions.prefill")


class PrefillCounter:
    """Counts left completions' prompts in background tasks, and lets the process wait for them when it stops."""

    def __init__(self, upstream: UpstreamClient) -> None:
        self._upstream = upstream
        self._tasks: set[asyncio.Task[None]] = set()

    def count_then(self, backend: Backend, payload: Mapping[str, Any], then: Callable[[int], None]) -> None:
        """Count ``payload``'s prompt on ``backend``, then call ``then`` with the count (0 where none came)."""
        task = asyncio.create_task(self._count_then(backend, payload, then), name="prefill-count")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _count_then(self, backend: Backend, payload: Mapping[str, Any], then: Callable[[int], None]) -> None:
        count = 0
        if backend.breaker.state.status == BreakerStatus.CLOSED:
            try:
                count, _ = await self._upstream.count_prompt_tokens(backend, payload)
            except UpstreamError as exc:
                logger.warning(
                    "could not count the prompt of a completion left before its first token; "
                    "it is recorded without input tokens",
                    backend=backend.name,
                    error=exc.detail,
                )
        else:
            logger.warning(
                "a completion was left before its first token while its backend's breaker is open; "
                "it is recorded without input tokens",
                backend=backend.name,
            )
        try:
            then(count)
        except Exception:
            logger.exception("recording a completion left before its first token failed")

    async def settled(self) -> None:
        """Wait for the counts under way (each bounded by its backend's first-token timeout) to be recorded."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
