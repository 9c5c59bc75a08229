"""A dataset's CSV export is safe to open in a spreadsheet and still reads back as the same items."""

from __future__ import annotations

import csv
import io

from registry.evals.formats import parse_csv, to_csv
from registry.evals.schemas import DatasetItemOut


def test_formula_like_expected_texts_are_quoted_on_export_and_read_back_unchanged() -> None:
    texts = ['=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "\tx", "'=already", "''-two", "'tis", "'", "plain"]
    items = [
        DatasetItemOut(position=i, variables={"q": t}, expected=t, tags=[], metadata={}) for i, t in enumerate(texts)
    ]
    exported = b"".join(to_csv(items, ["q"]))
    cells = [row["expected"] for row in csv.DictReader(io.StringIO(exported.decode()))]
    assert [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t"))] == []
    assert cells[:4] == ['\'=HYPERLINK("http://x")', "'+1", "'-2", "'@SUM(A1)"]
    assert cells[5:8] == ["''=already", "'''-two", "'tis"], "a text already quoted keeps its quote"
    assert [(item.variables, item.expected) for item in parse_csv(exported)] == [({"q": t}, t) for t in texts]
    # A hand-written CSV reads a quoted formula as a spreadsheet does, in text variables too.
    hand = parse_csv(b"var.q,expected\n'=1+1,'-3\n'tis,x\n")
    assert [(item.variables, item.expected) for item in hand] == [({"q": "=1+1"}, "-3"), ({"q": "'tis"}, "x")]
