"""Output guards on a stream, without a server: what leaves, and when a block stops it.

Cases in ``cases/streams.json``: [description, guards, text, chunk size, default window, expected], where
expected has ``released`` (all that left) or ``released_before`` (what left is a prefix of the text before
that pattern's first occurrence), the guard that ``blocked`` (or null) and the (guard, outcome) pairs recorded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from registry.guards.engine import ContentBlockedError, Guarding, compile_guards

CASES = json.loads((Path(__file__).parent / "cases" / "streams.json").read_text())


async def chunked(text: str, size: int) -> AsyncIterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


async def screened(guarding: Guarding, text: str, size: int) -> tuple[str, str | None]:
    """What the screen released, and the guard that blocked (None: it ran to the end)."""
    released = ""
    try:
        async for piece in guarding.screen(chunked(text, size)):
            released += piece
    except ContentBlockedError as exc:
        return released, exc.extra["guard"]
    return released, None


@pytest.mark.parametrize(
    ("guards", "text", "size", "window", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_a_stream_is_screened_from_cases(
    guards: list[dict[str, Any]], text: str, size: int, window: int, expected: dict[str, Any]
) -> None:
    guarding = Guarding(compile_guards(guards), None, default_window=window)

    released, blocked = await screened(guarding, text, size)

    if "released" in expected:
        assert released == expected["released"]
    else:
        assert text[: text.index(expected["released_before"])].startswith(released)
    assert blocked == expected["blocked"]
    assert [[o["guard"], o["outcome"]] for o in guarding.log.outcomes] == expected["outcomes"]


@pytest.mark.parametrize("size", range(1, 13))
async def test_every_chunking_releases_text_but_none_of_a_pattern_the_window_covers(size: int) -> None:
    text = "Some harmless words come first, and then the forbidden phrase appears here."
    guards = [{"name": "deny", "kind": "deny_patterns", "patterns": ["forbidden phrase"], "on": "output"}]
    guarding = Guarding(compile_guards(guards), None, default_window=len("forbidden phrase"))

    released, blocked = await screened(guarding, text, size)

    assert blocked == "deny"
    assert released  # the window let the harmless start through before the pattern came
    assert text[: text.index("forbidden")].startswith(released)


async def test_a_window_shorter_than_the_pattern_lets_it_through() -> None:
    """The bound is real: a finding longer than the window has begun to leave before it can be seen whole."""
    text = "harmless words first, then the forbidden phrase."
    guards = [{"name": "deny", "kind": "deny_patterns", "patterns": ["forbidden phrase"], "on": "output"}]
    guarding = Guarding(compile_guards(guards), None, default_window=4)

    released, blocked = await screened(guarding, text, 1)

    assert blocked is None
    assert released == text
