"""Two versions' templates laid out side by side, as pure functions.

The API's diff is a unified diff for programs; people compare better with the two versions
next to each other, a removed line facing the line that replaced it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

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


def content_lines(template: str | None, messages: Sequence[dict[str, str]] | None) -> list[str]:
    """A version's text as lines: the template, or each chat message under a ``[role]`` line."""
    if messages is None:
        return (template or "").splitlines()
    lines: list[str] = []
    for message in messages:
        lines.append(f"[{message['role']}]")
        lines += message["content"].splitlines()
    return lines


def side_by_side(before: list[str], after: list[str], *, context: int = 3) -> list[DiffHunk]:
    """Hunks of changed lines with ``context`` unchanged lines around them; none when the texts are equal."""
    if before == after:
        return []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    hunks: list[DiffHunk] = []
    for group in matcher.get_grouped_opcodes(context):
        hunk = DiffHunk(group[0][1] + 1, group[0][3] + 1)
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                hunk.rows += [
                    DiffRow("same", i + 1, before[i], j + 1, after[j])
                    for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
                ]
                continue
            for k in range(max(i2 - i1, j2 - j1)):
                i, j = i1 + k, j1 + k
                old = before[i] if i < i2 else None
                new = after[j] if j < j2 else None
                kind: RowKind = (
                    "changed" if old is not None and new is not None else "removed" if new is None else "added"
                )
                hunk.rows.append(
                    DiffRow(kind, i + 1 if old is not None else None, old, j + 1 if new is not None else None, new)
                )
        hunks.append(hunk)
    return hunks
