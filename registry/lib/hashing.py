from __future__ import annotations

import hashlib
import json
from typing import Any


def content_sha256(content: Any) -> str:
    """SHA-256 of canonical JSON: equal content gives an equal digest, whatever the key order."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
