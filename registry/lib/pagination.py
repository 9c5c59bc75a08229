"""Opaque keyset cursors: stable under concurrent inserts, unlike offsets."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from registry.lib.errors import BadRequestError, FieldError

_NOT_ISSUED = "the cursor is not one this service issued"
_MAX_TEXT_KEY = 1000  # longer than any name or key a cursor is made from
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: tuple[Any, ...] | None

    @property
    def after_text(self) -> str | None:
        """The cursor's position in a list ordered by a text column (a name, a key).

        A cursor is the caller's to send back, so it may be any JSON: a value of another kind than the
        column's reached the database as a comparison it cannot make (a 500), or one it cannot hold (a NUL).
        """
        if self.after is None:
            return None
        value = self.after[0]
        if not isinstance(value, str) or len(value) > _MAX_TEXT_KEY or "\x00" in value:
            raise _refused()
        return value

    @property
    def after_number(self) -> int | None:
        """The cursor's position in a list ordered by an integer column (an id, a version number)."""
        if self.after is None:
            return None
        value = self.after[0]
        if value.__class__ is not int or not _INT64[0] <= value <= _INT64[1]:  # bool is an int, and is refused
            raise _refused()
        return int(value)


def _refused() -> BadRequestError:
    return BadRequestError(_NOT_ISSUED, errors=[FieldError("cursor", "is not a next_cursor of this list")])


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, arity: int) -> tuple[Any, ...] | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise _refused() from exc
    if not isinstance(values, list) or len(values) != arity:
        raise _refused()
    return tuple(values)
