"""Writing a buffered batch so that one record the database refuses does not hold back the others.

The buffered writers (usage records, first exposures, held outcome events) write a batch in one transaction and put
it back when the write fails, for the next flush. That is right when the database is unreachable or busy; it is wrong
when the database refuses the data itself (a NUL in text, a value past its column's range, a row whose experiment was
deleted): the batch fails the same way on every flush, and every record buffered after it waits behind it forever.
``write_isolating`` tells the two apart: on a refusal it writes the batch's halves apart, down to single records, so
the good ones are written and the refused ones are returned to be dropped and logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from asyncpg.exceptions import DataError as AsyncpgDataError
from asyncpg.exceptions import IntegrityConstraintViolationError as AsyncpgIntegrityError
from sqlalchemy import exc as sa_exc

T = TypeVar("T")

# SQLSTATE classes of errors inherent to the data: 22 data exception (a NUL in text, "unsupported Unicode escape
# sequence", a number out of range), 23 integrity constraint violation.
_REFUSED_DATA_SQLSTATES = ("22", "23")


def is_refused_data(exc: BaseException) -> bool:
    """The database refused the data itself: writing it again fails the same way (as opposed to a lost connection,
    a timeout, a deadlock or a shutdown, which a later try may get past)."""
    if isinstance(exc, sa_exc.DataError | sa_exc.IntegrityError):
        return True
    if not isinstance(exc, sa_exc.DBAPIError) or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return False
    if exc.connection_invalidated:
        return False
    cause: BaseException | None = exc.orig
    while cause is not None:  # asyncpg raises some while encoding, and SQLAlchemy wraps them as a generic DBAPIError
        if isinstance(cause, AsyncpgDataError | AsyncpgIntegrityError):
            return True
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_REFUSED_DATA_SQLSTATES):
            return True
        cause = cause.__cause__
    return False


@dataclass
class Isolated(Generic[T]):
    """What ``write_isolating`` did with a batch."""

    written: list[T] = field(default_factory=list)
    refused: list[tuple[T, BaseException]] = field(default_factory=list)  # each with the database's refusal
    unwritten: list[T] = field(default_factory=list)  # not tried, or failed otherwise: for the next flush
    error: BaseException | None = None  # the error that stopped it (not a refusal), if any


async def write_isolating(batch: Sequence[T], write: Callable[[list[T]], Awaitable[Any]]) -> Isolated[T]:
    """Write ``batch`` with ``write`` (one transaction per call); where the database refuses a part, write its
    halves apart, down to single records, which are then refused. Stops at the first error of another kind, leaving
    what was not written in ``unwritten``. One bad record among n costs about 2 log2(n) more transactions."""
    outcome: Isolated[T] = Isolated()
    parts: list[list[T]] = [list(batch)] if batch else []
    while parts:
        part = parts.pop()
        try:
            await write(part)
        except Exception as exc:
            if not is_refused_data(exc):
                outcome.unwritten = [item for rest in [part, *reversed(parts)] for item in rest]
                outcome.error = exc
                return outcome
            if len(part) == 1:
                outcome.refused.append((part[0], exc))
                continue
            middle = len(part) // 2
            parts.extend((part[middle:], part[:middle]))  # the first half is written first
        else:
            outcome.written.extend(part)
    return outcome
