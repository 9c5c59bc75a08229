"""How stored data names an erasable unit without keeping it (pure, importable from any domain)."""

from __future__ import annotations

import hashlib


def unit_digest(unit: str) -> str:
    """How the audit log and the caches name a unit: a digest, so they do not keep what erasure removes."""
    return "sha256:" + hashlib.sha256(unit.encode()).hexdigest()[:32]


# How long after a unit's erasure a request that began before it may still be in flight and record the unit's data
# (a completion's attempts each end within its backend's total_timeout, 120 s by default): what such a request
# writes meanwhile is written without the unit, or not at all. As ``registry.completions.usage.ERASED_SECONDS``
# and the exact cache's tombstones (``registry.completions.cache.IN_FLIGHT_SECONDS``).
ERASURE_IN_FLIGHT_SECONDS = 3600.0
