"""``registry eval run --no-wait --min-pass-rate``: the threshold cannot be checked on a run not followed, so the
command is refused as a usage error instead of exiting 0 as if the run had met it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, cast

from click.testing import CliRunner

from registry.cli.eval_commands import Progress, evals, follow


def test_no_wait_with_a_minimum_pass_rate_is_a_usage_error_before_any_run_starts() -> None:
    args = ["run", "p", "--version", "1", "--dataset", "d", "--no-wait", "--min-pass-rate", "0.9"]
    # A URL nothing listens on: the refusal comes before the command asks the registry anything.
    result = CliRunner().invoke(evals, [*args, "--url", "http://127.0.0.1:9", "--api-key", "k"])
    assert result.exit_code == 2, result.output
    assert "--no-wait" in result.output


def test_a_scorer_nested_too_deep_is_a_usage_error_not_a_traceback() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    args = ["run", "p", "--version", "1", "--dataset", "d", "--scorer", deep]
    result = CliRunner().invoke(evals, [*args, "--url", "http://127.0.0.1:9", "--api-key", "k"])
    assert result.exit_code == 2, result.output
    assert "nested too deep" in result.output


class EndingStream:
    """A client whose event stream ends without its done event while the run goes on, once."""

    def __init__(self) -> None:
        self.connects = 0

    def eval_run_events(self, run_id: int) -> Iterator[tuple[str, dict[str, Any]]]:
        self.connects += 1
        yield "progress", {"id": run_id, "status": "running", "items_done": self.connects, "total_items": 2}
        if self.connects > 1:
            yield "done", {"id": run_id, "status": "completed", "items_done": 2, "total_items": 2}

    def get_eval_run(self, run_id: int) -> dict[str, Any]:
        return {"id": run_id, "status": "running", "items_done": 1, "total_items": 2}


def test_a_stream_that_ends_before_the_run_does_is_followed_again_to_the_end() -> None:
    client = EndingStream()
    final = follow(cast(Any, client), 5, Progress(io.StringIO(), tty=False))
    assert (client.connects, final["status"]) == (2, "completed")
