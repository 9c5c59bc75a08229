"""How stored data names an erasable unit without keeping it (pure, importable from any domain)."""

from __future__ import annotations

import hashlib


def unit_digest(unit: str) -> str:
    """How the audit log and the caches name a unit: a digest, so they do not keep what erasure removes."""
    return "sha256:" + hashlib.sha256(unit.encode()).hexdigest()[:32]
