"""Dataset CSVs: what the csv module cannot read is a problem naming the row, not a 500 or a silent merge of rows,
and an item with a long text (stored from JSON) exports as a CSV that reads back."""

from __future__ import annotations

import pytest

from registry.evals.formats import DatasetFormatError, parse_csv, parse_jsonl, to_csv
from registry.evals.schemas import MAX_ITEMS, DatasetItemOut


def test_a_csv_that_cannot_be_read_is_refused_naming_its_row() -> None:
    # A quote left open took every later row into its cell: one item instead of three, or a 500 past 131072 chars.
    raw = b'question,expected\nfine,yes\n"open,no\nlater,yes\n' + b"x" * 200_000 + b",no\n"
    with pytest.raises(DatasetFormatError) as refused:
        parse_csv(raw)
    (problem,) = refused.value.errors
    assert problem.field == "row 3"
    assert "cannot be read" in problem.message


def test_an_item_with_a_long_expected_output_reads_back_from_its_csv_export() -> None:
    long = "y" * 300_000
    item = DatasetItemOut(position=1, variables={"question": "q"}, expected=long, tags=[], metadata={})
    (back,) = parse_csv(b"".join(to_csv([item], ["question"])))
    assert back.expected == long
    assert back.variables == {"question": "q"}


def test_a_file_of_more_items_than_a_version_holds_is_refused_where_the_limit_is_passed() -> None:
    for parse, raw, where in (
        (parse_jsonl, b'{"variables": {}}\n\n' * (MAX_ITEMS + 3), f"line {2 * MAX_ITEMS + 1}"),
        (parse_csv, b"question\n" + b"q\n" * (MAX_ITEMS + 3), f"row {MAX_ITEMS + 2}"),
    ):
        with pytest.raises(DatasetFormatError) as refused:
            parse(raw)
        assert [problem.field for problem in refused.value.errors] == [where]
