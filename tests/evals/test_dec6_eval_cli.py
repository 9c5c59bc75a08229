"""``registry eval run --no-wait --min-pass-rate``: the threshold cannot be checked on a run not followed, so the
command is refused as a usage error instead of exiting 0 as if the run had met it."""

from __future__ import annotations

from click.testing import CliRunner

from registry.cli.eval_commands import evals


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
