"""The prompt of a completion attempt a backend took but reported no usage for, counted once the completion ended.

The backend reports usage in every chunk (``continuous_usage_stats``), so an attempt that ends after its first chunk
is charged exactly. One that ends before it got no report, yet the backend took the request and read the prompt:
the caller left during the prefill, the first token did not come within its timeout, or the connection broke and
the request was retried. Recorded with no input tokens, a client that leaves every request before its first token
(or a backend that times out on every one) would spend the backend's time on a key whose budget never moves. The
prompt is counted by the backend (vLLM ``/tokenize``) once the completion has ended, off any request's path, and
only then recorded. A backend that cannot count (its breaker not closed, or the count failing) leaves the record
without those input tokens, as before, and says so in the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from registry.completions.errors import UpstreamError
from registry.completions.policy import BreakerStatus
from registry.completions.upstream import Backend, UpstreamClient

logger = structlog.get_logger("registry.completions.prefill")

Prompt = tuple[Backend, Mapping[str, Any]]  # a request's payload, counted on the backend that took it


class PrefillCounter:
    """Counts ended completions' prompts in background tasks, and lets the process wait for them when it stops."""

    def __init__(self, upstream: UpstreamClient) -> None:
        self._upstream = upstream
        self._tasks: set[asyncio.Task[None]] = set()

    def count_each_then(self, prompts: Sequence[Prompt], then: Callable[[list[int]], None]) -> None:
        """Count each of ``prompts`` (a config's, and its fallback's), then call ``then`` with the counts in order
        (0 where none came)."""
        task = asyncio.create_task(self._count_then(prompts, then), name="prefill-count")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _count_then(self, prompts: Sequence[Prompt], then: Callable[[list[int]], None]) -> None:
        counts = [await self._count(backend, payload) for backend, payload in prompts]
        try:
            then(counts)
        except Exception:
            logger.exception("recording a completion whose prompt was counted failed")

    async def _count(self, backend: Backend, payload: Mapping[str, Any]) -> int:
        if backend.breaker.state.status != BreakerStatus.CLOSED:
            logger.warning(
                "a completion attempt ended before any usage came while its backend's breaker is open; "
                "it is recorded without its prompt's tokens",
                backend=backend.name,
            )
            return 0
        try:
            count, _ = await self._upstream.count_prompt_tokens(backend, payload)
        except UpstreamError as exc:
            logger.warning(
                "could not count the prompt of a completion attempt that ended before any usage came; "
                "it is recorded without its prompt's tokens",
                backend=backend.name,
                error=exc.detail,
            )
            return 0
        return count

    async def settled(self) -> None:
        """Wait for the counts under way (each bounded by its backend's first-token timeout) to be recorded."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
