"""A CSV the csv module cannot read on (a cell past its field limit) is a dataset problem naming the row, not a 500."""

from __future__ import annotations

import pytest

from registry.evals.formats import DatasetFormatError, parse_csv


def test_a_csv_cell_past_the_field_limit_is_refused_naming_its_row() -> None:
    raw = b"question,expected\nfine,yes\n" + b"x" * 200_000 + b",no\n"
    with pytest.raises(DatasetFormatError) as refused:
        parse_csv(raw)
    (problem,) = refused.value.errors
    assert problem.field == "row 3"
    assert "field limit" in problem.message
