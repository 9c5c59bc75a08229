"""The SQL statements run on behalf of what a test does, told apart from the app's periodic jobs' statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event

from registry.runtime import Runtime

_COUNTED: ContextVar[bool] = ContextVar("counted", default=False)


@contextmanager
def statements_of_this_block(runtime: Runtime) -> Iterator[list[str]]:
    """The statements ``runtime``'s engine runs for the block: for its requests and the tasks they start.

    The app's periodic jobs (evaluation runs to take, rollouts to check, alert rules to evaluate, buffers to
    flush) poll the database on their own clock, in tasks started before the block, so a job's statement may
    come at any moment of it. A task copies the context of the code that starts it, so the flag set here is
    seen by the block's requests (served in the test's task) and by what they start, never by a job or its runs.
    """
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if _COUNTED.get():
            seen.append(statement)

    engine = runtime.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    counted = _COUNTED.set(True)
    try:
        yield seen
    finally:
        _COUNTED.reset(counted)
        event.remove(engine, "before_cursor_execute", record)
