"""A unified diff (as the prompts API returns it) laid out side by side, as a pure function."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")

RowKind = Literal["same", "changed", "removed", "added"]


@dataclass(frozen=True, slots=True)
class DiffRow:
    kind: RowKind
    left_number: int | None
    left: str | None
    right_number: int | None
    right: str | None


@dataclass(slots=True)
class DiffHunk:
    left_start: int
    right_start: int
    rows: list[DiffRow] = field(default_factory=list)


def side_by_side(unified: str) -> list[DiffHunk]:
    """Hunks of rows: a removed line faces the added line that replaced it; unchanged lines face themselves."""
    hunks: list[DiffHunk] = []
    removed: list[str] = []
    added: list[str] = []
    left = right = 0

    def flush() -> None:
        nonlocal left, right
        hunk = hunks[-1]
        for i in range(max(len(removed), len(added))):
            old = removed[i] if i < len(removed) else None
            new = added[i] if i < len(added) else None
            kind: RowKind = "changed" if old is not None and new is not None else "removed" if new is None else "added"
            hunk.rows.append(
                DiffRow(
                    kind,
                    left + 1 if old is not None else None,
                    old,
                    right + 1 if new is not None else None,
                    new,
                )
            )
            left += old is not None
            right += new is not None
        removed.clear()
        added.clear()

    for raw in unified.splitlines():
        header = _HUNK.match(raw)
        if header:
            if hunks:
                flush()
            left, right = int(header.group(1)) - 1, int(header.group(2)) - 1
            hunks.append(DiffHunk(left + 1, right + 1))
            continue
        if not hunks or raw.startswith("\\"):
            continue  # the file header before the first hunk; "\ No newline at end of file"
        marker, text = raw[:1], raw[1:]
        if marker == "-":
            removed.append(text)
        elif marker == "+":
            added.append(text)
        else:
            flush()
            left += 1
            right += 1
            hunks[-1].rows.append(DiffRow("same", left, text, right, text))
    if hunks:
        flush()
    return hunks
