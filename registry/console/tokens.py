"""Session tokens, sealed keys and CSRF tokens of the console, as pure functions.

The cookie carries a random token (256 bits). Everything else is derived from it with
HMAC-SHA256 under distinct labels: the row id the server stores, the keystream that seals the
API key at rest (each token seals exactly one key, once, so the keystream is never reused), and
the CSRF token every form of that session carries, and the row id and seal of a new API key's
secret the session is shown once (after the form's redirect, never in a URL), and the row id that
records a playground run form as used (so a resubmitted form runs nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_ROW_LABEL = b"registry-console/session-row"
_SEAL_LABEL = b"registry-console/seal/"
_CSRF_LABEL = b"registry-console/csrf"
_LOGIN_CSRF_LABEL = b"registry-console/login-csrf"
_SHOWN_ONCE_ROW_LABEL = b"registry-console/shown-once-row/"
_SHOWN_ONCE_SEAL_LABEL = b"registry-console/shown-once-seal/"
_RUN_MADE_ROW_LABEL = b"registry-console/run-made-row/"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _mac(token: str, label: bytes) -> bytes:
    return hmac.new(token.encode(), label, hashlib.sha256).digest()


def token_digest(token: str) -> str:
    """The id under which the server stores a session; the token itself is never stored."""
    return _mac(token, _ROW_LABEL).hex()


def shown_once_digest(token: str, shown_id: str) -> str:
    """The id under which a secret to show once is stored for a session: a cookie's own row id never equals it."""
    return _mac(token, _SHOWN_ONCE_ROW_LABEL + shown_id.encode()).hex()


def run_made_digest(token: str, run_id: str) -> str:
    """The id under which a session records that the playground form ``run_id`` ran: no other row's id equals it."""
    return _mac(token, _RUN_MADE_ROW_LABEL + run_id.encode()).hex()


def shown_once_seal_key(token: str, shown_id: str) -> str:
    """What seals a secret to show once (with ``seal``): each ``shown_id`` is new, so no keystream is used twice."""
    return _mac(token, _SHOWN_ONCE_SEAL_LABEL + shown_id.encode()).hex()


def _keystream(token: str, length: int) -> bytes:
    blocks = (_mac(token, _SEAL_LABEL + str(i).encode()) for i in range(-(-length // 32)))
    return b"".join(blocks)[:length]


def seal(token: str, secret: str) -> bytes:
    data = secret.encode()
    return bytes(a ^ b for a, b in zip(data, _keystream(token, len(data)), strict=True))


def unseal(token: str, sealed: bytes) -> str:
    return bytes(a ^ b for a, b in zip(sealed, _keystream(token, len(sealed)), strict=True)).decode(
        "utf-8", errors="replace"
    )


def csrf_token(token: str, *, login: bool = False) -> str:
    """The token a session's forms carry (or, before sign-in, the sign-in form)."""
    return _mac(token, _LOGIN_CSRF_LABEL if login else _CSRF_LABEL).hex()


def csrf_matches(token: str, candidate: str | None, *, login: bool = False) -> bool:
    return candidate is not None and hmac.compare_digest(csrf_token(token, login=login), candidate)
