"""Opaque keyset cursors: stable under concurrent inserts, unlike offsets."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from registry.lib.errors import BadRequestError


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: tuple[Any, ...] | None


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, arity: int) -> tuple[Any, ...] | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error) as exc:
        raise BadRequestError("the cursor is not one this service issued") from exc
    if not isinstance(values, list) or len(values) != arity:
        raise BadRequestError("the cursor is not one this service issued")
    return tuple(values)
