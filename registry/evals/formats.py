"""Dataset items to and from JSONL and CSV: pure functions, no I/O.

JSONL: one JSON object per line, ``{"variables": {...}, "expected": "...", "tags": [...], "metadata": {...}}``;
only ``variables`` is required. Blank lines are skipped.

CSV (with a header row): ``expected`` (optional text), ``tags`` (a JSON array, or names separated by commas),
``metadata`` (a JSON object). Variables come from ``var.NAME`` columns (text) and ``json.NAME`` columns
(a JSON value, for numbers, booleans, lists and objects; an empty cell: no such variable); when there are
neither, every other column is a text variable. An empty ``expected`` cell means no expected output.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return as a
formula, so the CSV export writes such a text (``expected``; variables are JSON, which starts with a quote,
a bracket or a digit) with a leading ``'``, as spreadsheets themselves write text that is not a formula,
and reading a CSV takes that ``'`` off again: a text cell that is one or more ``'`` then one of those
characters loses its first ``'`` (``csv_text`` and ``text_of_cell``), so an export reads back as it was.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from registry.evals.schemas import MAX_ITEMS, DatasetItemIn, DatasetItemOut
from registry.lib.errors import FieldError, InvalidInputError

_RESERVED = ("expected", "tags", "metadata")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_MAX_PROBLEMS = 20
# The longest CSV cell read: as long as an upload may be (the csv module's own limit, 131072 characters, refused
# the export of an item whose expected output or a variable is longer, though it was stored from JSON).
CSV_CELL_LIMIT = 256 * 1024 * 1024
csv.field_size_limit(max(csv.field_size_limit(), CSV_CELL_LIMIT))


class DatasetFormatError(InvalidInputError):
    """An uploaded dataset file cannot be read; ``errors`` names the lines (or rows) and what is wrong."""

    type = "dataset_invalid"
    title = "Dataset invalid"


def _raise(problems: list[FieldError], what: str) -> None:
    if problems:
        raise DatasetFormatError(f"the {what} has {len(problems)} problem(s)", errors=problems[:_MAX_PROBLEMS])


def _too_many(where: str) -> DatasetFormatError:
    """Past ``MAX_ITEMS`` the file is refused where it is: 256 MiB of tiny items held every one in memory (tens of
    millions of them) before the version's own limit refused them all."""
    return DatasetFormatError(
        f"a dataset version holds at most {MAX_ITEMS} items",
        errors=[FieldError(where, f"item {MAX_ITEMS + 1}: over the limit of {MAX_ITEMS} items")],
    )


def parse_jsonl(raw: bytes) -> list[DatasetItemIn]:
    items: list[DatasetItemIn] = []
    problems: list[FieldError] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        if len(items) + len(problems) >= MAX_ITEMS:
            raise _too_many(f"line {number}")
        try:
            items.append(msgspec.json.decode(line, type=DatasetItemIn))
        except msgspec.DecodeError as exc:
            problems.append(FieldError(f"line {number}", str(exc)))
        except RecursionError:  # msgspec's, past about 1,000 levels
            problems.append(FieldError(f"line {number}", "nested too deep"))
        except UnicodeDecodeError:
            problems.append(FieldError(f"line {number}", "not UTF-8"))
    _raise(problems, "JSONL")
    return items


def _tags(cell: str) -> list[str]:
    cell = cell.strip()
    if not cell:
        return []
    if cell.startswith("["):
        value = json.loads(cell)
        if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
            raise ValueError("tags must be a JSON array of strings")
        return value
    return [tag.strip() for tag in cell.split(",") if tag.strip()]


def csv_text(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows rather than runs: a leading ``'`` where it would start a formula
    (or where it is already ``'`` then such a start, so that ``text_of_cell`` gives it back unchanged)."""
    return f"'{text}" if text.lstrip("'").startswith(_FORMULA_STARTS) else text


def text_of_cell(cell: str) -> str:
    """The text a CSV cell holds: ``csv_text`` undone (and ``'=...`` read as a spreadsheet reads it, ``=...``)."""
    return cell[1:] if cell.startswith("'") and cell.lstrip("'").startswith(_FORMULA_STARTS) else cell


def _csv_item(row: dict[str, str], variable_columns: list[tuple[str, str, bool]]) -> DatasetItemIn:
    variables: dict[str, Any] = {}
    for column, name, is_json in variable_columns:
        cell = row.get(column) or ""
        if is_json:
            if cell:  # an empty JSON cell: the item has no such variable
                variables[name] = json.loads(cell)
        else:
            variables[name] = text_of_cell(cell)
    metadata_cell = (row.get("metadata") or "").strip()
    fields = {
        "variables": variables,
        "expected": text_of_cell(row.get("expected") or "") or None,
        "tags": _tags(row.get("tags") or ""),
        "metadata": json.loads(metadata_cell) if metadata_cell else {},
    }
    return msgspec.convert(fields, DatasetItemIn)


def _rows(reader: csv.DictReader[str], problems: list[FieldError]) -> Iterator[dict[str, str]]:
    """The reader's rows until the CSV cannot be read on (a quote left open, text after a closing quote, a cell
    past ``CSV_CELL_LIMIT``), which is a problem named by its row rather than an error of the server."""
    read = 0
    try:
        for row in reader:
            read += 1
            yield row
    except csv.Error as exc:
        problems.append(FieldError(f"row {read + 2}", f"cannot be read: {exc}"))  # the header is row 1


def parse_csv(raw: bytes) -> list[DatasetItemIn]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError("the CSV is not UTF-8") from exc
    # Strict: a quote left open would otherwise take the rest of the file into one cell, silently.
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    columns = reader.fieldnames or []
    if not columns:
        raise DatasetFormatError("the CSV has no header row")
    prefixed = [
        (c, c.partition(".")[2], c.startswith("json.")) for c in columns if c.startswith(("var.", "json.")) and "." in c
    ]
    variable_columns = prefixed or [(c, c, False) for c in columns if c not in _RESERVED]
    items: list[DatasetItemIn] = []
    problems: list[FieldError] = []
    for number, row in enumerate(_rows(reader, problems), start=2):
        if number - 1 > MAX_ITEMS:
            raise _too_many(f"row {number}")
        if None in row:
            problems.append(FieldError(f"row {number}", "has more cells than the header has columns"))
            continue
        try:
            items.append(_csv_item(row, variable_columns))
        except (ValueError, msgspec.ValidationError) as exc:
            problems.append(FieldError(f"row {number}", str(exc)))
        except RecursionError:  # a json.NAME or metadata cell nested thousands of levels deep
            problems.append(FieldError(f"row {number}", "a JSON cell is nested too deep"))
    _raise(problems, "CSV")
    return items


def to_jsonl(items: Iterable[DatasetItemOut]) -> Iterator[bytes]:
    for item in items:
        yield (
            msgspec.json.encode(
                {"variables": item.variables, "expected": item.expected, "tags": item.tags, "metadata": item.metadata}
            )
            + b"\n"
        )


def csv_header(variable_names: list[str]) -> list[str]:
    return [*(f"json.{name}" for name in variable_names), "expected", "tags", "metadata"]


def to_csv(items: Iterable[DatasetItemOut], variable_names: list[str]) -> Iterator[bytes]:
    """The header, then one part per item; variables as ``json.NAME`` columns, so values keep their types."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header(variable_names))
    yield buffer.getvalue().encode()  # the header, always its own part
    buffer.seek(0)
    buffer.truncate()
    for item in items:
        writer.writerow(
            [
                *(
                    json.dumps(item.variables[name], ensure_ascii=False) if name in item.variables else ""
                    for name in variable_names
                ),
                csv_text(item.expected) if item.expected is not None else "",
                json.dumps(item.tags, ensure_ascii=False),
                json.dumps(item.metadata, ensure_ascii=False),
            ]
        )
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
