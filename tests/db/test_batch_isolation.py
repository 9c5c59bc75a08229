"""Writing a buffered batch apart when the database refuses its data, and only then."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from registry.db.batches import is_refused_data, write_isolating


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def dbapi_error(sqlstate: str, kind: type[sa_exc.DBAPIError] = sa_exc.DBAPIError) -> sa_exc.DBAPIError:
    return kind("INSERT ...", {}, _DriverError(sqlstate))


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (dbapi_error("22P05"), True),  # unsupported Unicode escape sequence: a NUL in JSON text
        (dbapi_error("22021"), True),  # invalid byte sequence: a NUL in text
        (dbapi_error("22003"), True),  # a number out of its column's range
        (dbapi_error("23502", sa_exc.IntegrityError), True),  # not null
        (dbapi_error("23503"), True),  # foreign key: its experiment was deleted
        (dbapi_error("40P01"), False),  # deadlock: a later try gets past it
        (dbapi_error("57P01"), False),  # the server shut down
        (dbapi_error("08006", sa_exc.OperationalError), False),  # the connection failed
        (dbapi_error("22003", sa_exc.OperationalError), False),  # an operational error is never the data's
        (ConnectionRefusedError(), False),
        (TimeoutError(), False),
    ],
    ids=lambda value: value if isinstance(value, bool) else type(value).__name__ + str(getattr(value, "orig", "")),
)
def test_only_errors_of_the_data_itself_are_refusals(error: BaseException, refused: bool) -> None:
    assert is_refused_data(error) is refused


def refusing(bad: set[int], calls: list[list[int]], *, down_after: int | None = None) -> Any:
    async def write(part: list[int]) -> None:
        calls.append(part)
        if down_after is not None and len(calls) > down_after:
            raise ConnectionRefusedError
        if bad & set(part):
            raise dbapi_error("22P05")

    return write


async def test_a_batch_without_refusals_is_written_in_one_call() -> None:
    calls: list[list[int]] = []
    outcome = await write_isolating(list(range(8)), refusing(set(), calls))
    assert (outcome.written, outcome.refused, outcome.unwritten, calls) == (list(range(8)), [], [], [list(range(8))])


async def test_refused_items_are_found_by_halves_and_the_others_written_in_order() -> None:
    calls: list[list[int]] = []
    outcome = await write_isolating(list(range(16)), refusing({5, 11}, calls))
    assert outcome.written == [i for i in range(16) if i not in (5, 11)]
    assert [item for item, _ in outcome.refused] == [5, 11]
    assert (outcome.unwritten, outcome.error) == ([], None)
    assert len(calls) <= 1 + 2 * 2 * 4  # about 2 log2(n) more per refused item


async def test_an_error_other_than_a_refusal_stops_and_leaves_the_rest_unwritten_in_order() -> None:
    calls: list[list[int]] = []
    outcome = await write_isolating(list(range(8)), refusing({6}, calls, down_after=2))
    # [0..7] refused, [0..3] written, then the database went away before [4..7]
    assert outcome.written == [0, 1, 2, 3]
    assert outcome.unwritten == [4, 5, 6, 7]
    assert isinstance(outcome.error, ConnectionRefusedError)
    assert outcome.refused == []
