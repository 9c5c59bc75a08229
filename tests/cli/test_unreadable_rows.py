"""A file row the CLI cannot read (a CSV cell past the csv module's limit, JSON nested past the interpreter's) is a
one-line error naming the file and the row, with the exit code of the file's other bad rows: never a traceback.

Each is refused before anything is sent, so no registry is needed: the URL leads nowhere, and a command that
got as far as asking it would exit 7 (unavailable) instead.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from registry.cli import main
from registry.cli.output import ExitCode
from registry.promptfiles.datasets import items_of

CSV_DEFAULT_LIMIT = 131_072  # the csv module's own limit on a cell, which the registry's CLI process keeps
NOWHERE = {"REGISTRY_URL": "http://127.0.0.1:9", "REGISTRY_API_KEY": "rk_unused"}
DEEP = "[" * 100_000 + "]" * 100_000  # deeper than json's recursion can go


@pytest.fixture
def default_csv_limit() -> Iterator[None]:
    """The csv module's default limit: the server's dataset reader raises it for the whole process when imported."""
    previous = csv.field_size_limit(CSV_DEFAULT_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=NOWHERE)


def one_line_error(result: Result) -> str:
    """The error the command printed, checked to be one line and no traceback."""
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.mark.usefixtures("default_csv_limit")
def test_a_csv_cell_longer_than_the_csv_limit_is_an_error_naming_the_file_and_row(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(
        "unit,metric,timestamp\n"
        "u1,converted,2026-01-31T12:00:00Z\n"
        f"{'u' * (CSV_DEFAULT_LIMIT + 1)},converted,2026-01-31T12:00:00Z\n"
    )

    result = run("events", "send", str(events))

    assert result.exit_code == ExitCode.VALIDATION
    error = one_line_error(result)
    assert error == f"error: {events} row 3 is not valid CSV: field larger than field limit ({CSV_DEFAULT_LIMIT})\n"


@pytest.mark.usefixtures("default_csv_limit")
def test_a_csv_header_longer_than_the_csv_limit_is_an_error_naming_row_one(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text(f"unit,{'m' * (CSV_DEFAULT_LIMIT + 1)}\nu1,converted\n")

    result = run("events", "send", str(events))

    assert result.exit_code == ExitCode.VALIDATION
    assert one_line_error(result).startswith(f"error: {events} row 1 is not valid CSV: field larger than")


def test_a_json_lines_event_nested_too_deep_is_an_error_naming_the_file_and_line(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    good = {"unit": "u1", "metric": "converted", "timestamp": "2026-01-31T12:00:00Z"}
    events.write_text(json.dumps(good) + "\n" + DEEP + "\n")

    result = run("events", "send", str(events))

    assert result.exit_code == ExitCode.VALIDATION
    assert one_line_error(result) == f"error: {events} line 2 is not JSON: nested too deep\n"


def test_variables_nested_too_deep_are_a_usage_error_naming_the_option() -> None:
    result = run("render", "greet", "--vars", DEEP)

    assert result.exit_code == ExitCode.USAGE
    assert isinstance(result.exception, SystemExit)
    assert "--vars" in result.stderr
    assert "not JSON: nested too deep" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_dataset_file_line_nested_too_deep_is_a_problem_naming_its_line() -> None:
    raw = (json.dumps({"variables": {"a": "x"}}) + "\n" + DEEP + "\n").encode()

    items, problems = items_of(raw, "datasets/cases.jsonl")

    assert items == [{"variables": {"a": "x"}, "expected": None, "tags": [], "metadata": {}}]
    assert problems == ["datasets/cases.jsonl: line 2 is not JSON: nested too deep"]


def test_events_on_stdin_that_are_not_utf8_are_a_usage_error_naming_stdin() -> None:
    result = CliRunner().invoke(main, ["events", "send", "-"], env=NOWHERE, input=b'{"unit": "\xff"}\n')

    assert result.exit_code == ExitCode.USAGE
    assert one_line_error(result).startswith("error: cannot read stdin as UTF-8 text: ")
