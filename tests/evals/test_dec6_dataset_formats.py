"""Dataset CSVs: what the csv module cannot read is a problem naming the row, not a 500 or a silent merge of rows,
and an item with a long text (stored from JSON) exports as a CSV that reads back."""

from __future__ import annotations

import uuid

import pytest

from registry.evals.formats import DatasetFormatError, parse_csv, parse_jsonl, to_csv
from registry.evals.schemas import MAX_ITEMS, DatasetItemOut
from tests.conftest import AppClient


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


async def test_json_nested_too_deep_or_not_utf8_is_a_problem_naming_its_line_row_or_body(
    evals: AppClient, admin: dict[str, str]
) -> None:
    deep = "[" * 5_000 + "]" * 5_000
    lines = f'{{"variables": {{"a": 1}}}}\n{{"variables": {{"a": {deep}}}}}\n{{"variables": {{"a": "\xff"}}}}\n'
    with pytest.raises(DatasetFormatError) as jsonl:
        parse_jsonl(lines.encode("latin-1"))
    problems = [(p.field, p.message) for p in jsonl.value.errors]
    assert problems == [("line 2", "nested too deep"), ("line 3", "not UTF-8")]
    with pytest.raises(DatasetFormatError) as csv_file:
        parse_csv(f"json.a\n1\n{deep}\n".encode())
    assert [p.field for p in csv_file.value.errors] == ["row 3"]
    name = f"deep-{uuid.uuid4().hex[:6]}"
    await evals.post("/v1/evals/datasets", json={"name": name}, headers=admin)
    body = '{"items": [{"variables": {"a": ' + deep + "}}]}"
    response = await evals.post(
        f"/v1/evals/datasets/{name}/versions", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert "nested too deeply" in response.json()["detail"]
