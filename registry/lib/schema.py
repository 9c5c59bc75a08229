"""Base classes for request and response bodies (msgspec, separate from ORM models)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import msgspec

T = TypeVar("T")

# No NUL: PostgreSQL text cannot hold one. For text written in batches (units, event keys), where one such
# value would fail the whole batch at the database, the check is made per item.
NO_NUL_PATTERN = r"^[^\x00]+$"
# A pattern ends in ``(?!\n)$``: msgspec checks it with ``re.search``, whose ``$`` also matches before a final
# newline, so "greet\n" passed ``...$`` (a name no URL, header or log line carries as is). The same text is the
# OpenAPI pattern, where ``$`` alone is the end: the lookahead means the same in both.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*(?!\n)$"
ResourceName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        pattern=NAME_PATTERN,
        description="Lowercase letters, digits, '-', '_', '.', and '/' between folder segments; at most 128.",
        examples=["support/summarize"],
    ),
]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*(?!\n)$")]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=32)]
# May be empty; no NUL (a NUL failed at the database as a 422 naming no field).
TEXT_PATTERN = r"^[^\x00]*$"
Description = Annotated[str, msgspec.Meta(max_length=2000, pattern=TEXT_PATTERN)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: unknown fields are refused so typos do not pass silently."""


class Output(msgspec.Struct, kw_only=True):
    """A response body."""


def paginate(rows: Sequence[T], limit: int, cursor_of: Callable[[T], str]) -> tuple[list[T], str | None]:
    """Split the ``limit + 1`` rows a repository returned into a page and the next cursor."""
    items = list(rows[:limit])
    next_cursor = cursor_of(items[-1]) if len(rows) > limit and items else None
    return items, next_cursor


def to_builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)
