"""Console sign-ins, kept on the server so the API key never travels back to the browser."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from registry.db.base import Base


class ConsoleSession(Base):
    """One browser sign-in.

    The row is found by a digest of the cookie's token, and the API key is sealed under the token
    itself, so the table alone (a backup, a read-only leak) neither names a live cookie nor reveals a key.
    A new key's secret, waiting a few minutes for the page that shows it once, is a row of the same
    shape: found and sealed under other labels of its session's token (``tokens.shown_once_digest``),
    so no cookie opens it as a sign-in, and removed as it is shown.
    """

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_expires_at", "expires_at"),)

    token_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    sealed_key: Mapped[bytes] = mapped_column(LargeBinary)
    key_public_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
