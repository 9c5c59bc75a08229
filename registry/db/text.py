"""Text that PostgreSQL can store: its text and JSON types hold no NUL (U+0000), and a ``varchar(n)`` no more than
n characters.

Where a NUL cannot be refused at the door (the model's answer, a prompt rendered from variables that held one, what
a scorer or a judge said about an answer), it is stored as U+FFFD, the character Unicode gives for one that cannot
be represented. SQLite could store it; both store the same. Where a string past its column's length cannot be
refused at the door either (a backend's finish reason), it is stored cut to that length (``column_lengths``): a
record kept whole but for the end of one odd string is worth more than a record refused (and its spend lost to
usage reports and alerts). What a caller sends is refused with a 422 naming the field instead.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String

NUL = "\x00"
REPLACEMENT_CHARACTER = "\ufffd"  # what a NUL is stored as


def without_nul(value: Any) -> Any:
    """``value`` with each NUL in its text replaced by U+FFFD: a str, or the strs (keys too) of a dict or list,
    at any depth (a dict or list is copied). Anything else is returned as it is."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT_CHARACTER) if NUL in value else value
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


def holds_nul(value: Any) -> bool:
    """Whether ``value`` (a str, or a dict's keys and values or a list's items, at any depth) holds a NUL: as
    ``nul_location``, without making the path, for a check made on every write."""
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(holds_nul(key) or holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(holds_nul(item) for item in value)
    return False


def nul_location(value: Any, path: str) -> str | None:
    """Where the first NUL in ``value`` is, as a path below ``path`` (``variables.name``, ``metadata.ids[2]``, a
    key as ``variables key 'a\\x00b'``), or None: for refusing one by name where it can be refused."""
    if isinstance(value, str):
        return path if NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and NUL in key:
                return f"{path} key {key!r}"
            found = nul_location(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_location(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def column_lengths(model: type[Any]) -> dict[str, int]:
    """The length of each of ``model``'s ``String(n)`` columns, by column name: for cutting what cannot be refused
    at the door to fit (``fitted``)."""
    return {
        column.name: column.type.length
        for column in model.__table__.columns
        if isinstance(column.type, String) and column.type.length is not None
    }


def fitted(value: str, length: int) -> str:
    """``value`` cut to at most ``length`` characters (PostgreSQL counts a ``varchar``'s length in characters, as
    Python does: code points)."""
    return value if len(value) <= length else value[:length]
