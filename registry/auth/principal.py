from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of a request: an API key and what it may do."""

    key_id: int
    public_id: str
    name: str
    scopes: frozenset[str]
    rate_limit_per_minute: int | None = None  # None: the deployment's default; 0: unlimited


@dataclass(frozen=True, slots=True)
class Actor:
    """Who performs a change, as written to history and the audit log."""

    name: str
    key_public_id: str | None = None
    request_id: str | None = None
