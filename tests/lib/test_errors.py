"""Database errors that mean "the server is gone or not back yet" become 503, not 500."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from registry.lib.errors import translate_exception


class DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("57P01", "database_unavailable"),  # admin_shutdown: the server is stopping
        ("57P03", "database_unavailable"),  # cannot_connect_now: starting up or shutting down
        ("08006", "database_unavailable"),  # connection_failure
        ("57014", "internal_error"),  # query_canceled (a statement timeout) is not an outage
        ("42601", "internal_error"),  # a syntax error is a bug
    ],
    ids=["admin-shutdown", "cannot-connect-now", "connection-failure", "query-canceled", "syntax-error"],
)
def test_driver_errors_map_by_sqlstate(sqlstate: str, expected: str) -> None:
    error = sa_exc.DBAPIError("SELECT 1", None, DriverError(sqlstate))

    assert translate_exception(error).type == expected
