"""The time window of a usage report, from the days a caller names. A pure function."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from registry.lib.errors import FieldError, InvalidInputError

DEFAULT_DAYS = 30


def usage_window(since: date | None, until: date | None, *, today: date) -> tuple[datetime, datetime]:
    """From the start of ``since`` (default: ``DEFAULT_DAYS`` before ``until``) to the end of ``until`` (default:
    ``today``), in UTC.

    The calendar's last day has no end to reach and its first no days before it: ``until=9999-12-31`` or
    ``until=0001-01-01`` made the window's arithmetic overflow, a 500 for a caller's date.
    """
    last = until or today
    if last >= date.max:
        raise InvalidInputError(
            "until is the calendar's last day", errors=[FieldError("until", f"must be before {date.max}")]
        )
    first = since or last - timedelta(days=min(DEFAULT_DAYS, (last - date.min).days))
    if first > last:
        raise InvalidInputError("since is after until", errors=[FieldError("since", "must not be after until")])
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    return start, end
