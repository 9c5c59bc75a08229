"""What every command shares: exit codes, tables, JSON output. Imports nothing but click and the standard library."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from typing import Any, NoReturn

import click


class ExitCode(IntEnum):
    """What a non-zero status means, so scripts can tell a typo from a missing prompt from an outage."""

    OK = 0
    ERROR = 1  # anything not named below
    USAGE = 2  # a wrong command, option or argument (click's own code)
    NOT_FOUND = 3  # 404: no such prompt, version, experiment, webhook...
    CONFLICT = 4  # 409: the state changed meanwhile, or the operation does not fit it
    UNAUTHORIZED = 5  # 401/403: no key, an unknown or revoked key, or a missing scope
    VALIDATION = 6  # 400/422: the service refused what was sent (or a file held bad rows)
    UNAVAILABLE = 7  # no connection, 429/502/503/504, or the database cannot be reached


EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  other errors
  2  usage error (unknown command, option or argument)
  3  not found (404)
  4  conflict (409)
  5  unauthorized or forbidden (401/403, no API key)
  6  validation failed (400/422)
  7  unavailable (no connection, 429/502/503/504, database unreachable)
"""


def exit_code_for_status(status: int | None) -> ExitCode:
    """The exit code of an HTTP error status (None: nothing answered)."""
    if status is None or status in (429, 502, 503, 504):
        return ExitCode.UNAVAILABLE
    return {
        400: ExitCode.VALIDATION,
        401: ExitCode.UNAUTHORIZED,
        403: ExitCode.UNAUTHORIZED,
        404: ExitCode.NOT_FOUND,
        409: ExitCode.CONFLICT,
        412: ExitCode.CONFLICT,
        422: ExitCode.VALIDATION,
    }.get(status, ExitCode.ERROR)


def error_detail(status: int | None, detail: str) -> str:
    """An error answer's detail; a proxy's or a load balancer's HTML page is named, not printed whole."""
    if detail.lstrip().startswith("<"):
        return f"HTTP {status}, answered with an HTML page (a proxy's?), not the registry's problem+json"
    return detail


def fail(message: str, code: ExitCode) -> NoReturn:
    """Print one line (``error: ...``) to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    raise SystemExit(int(code))


def size_problem(value: Any, *, max_values: int, max_depth: int) -> str | None:
    """Why ``value`` (as a YAML file loaded) is too large or too deep to send, counting a value once per alias
    to it, or None. A "billion laughs" file of a few lines is 10^9 values once encoded as JSON."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    count = 0
    while pending:
        item, depth = pending.pop()
        count += 1
        if count > max_values:
            return f"holds more than {max_values} values once its aliases (*name) are expanded"
        if depth > max_depth:
            return f"nested deeper than {max_depth} levels"
        if isinstance(item, dict):
            pending += [(part, depth + 1) for pair in item.items() for part in pair]
        elif isinstance(item, list):
            pending += [(part, depth + 1) for part in item]
    return None


def cell(value: Any) -> str:
    """A value as table text: lists comma-separated, mappings as JSON, None empty."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(cell(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def table(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    rows = list(rows)
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row_cells in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row_cells, widths, strict=True)).rstrip())
    if not rows:
        click.echo("(none)")


def emit(as_json: bool, payload: Any, render: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        render()


def echo_lines(text: str) -> None:
    """Print ``text`` so that every line ends with a newline, the last one included."""
    for line in text.splitlines():
        click.echo(line)


def gate_evidence(problem: dict[str, Any]) -> list[str]:
    """A refused promotion's evidence, readably: each failure, then the numbers the gate looked at."""
    lines = [f"failed: {failure}" for failure in problem.get("failures") or []]
    evidence = problem.get("evidence") or {}
    gate = evidence.get("gate") or {}
    if gate:
        wanted = [f"dataset {evidence.get('dataset') or gate.get('dataset')}"]
        if gate.get("min_pass_rate") is not None:
            wanted.append(f"min pass rate {gate['min_pass_rate']:g}")
        if gate.get("no_regression"):
            wanted.append(f"no regression at alpha {gate.get('alpha', 0.05):g}")
        if gate.get("scorers") and evidence.get("scoring"):
            wanted.append(f"scored with {evidence['scoring']}")
        lines.append(f"gate on {gate.get('state')}: {', '.join(wanted)}")
    shown = {k: v for k, v in evidence.items() if k not in ("gate", "dataset")}
    if shown:
        lines.append("evidence: " + ", ".join(f"{k} {json.dumps(v, default=str)}" for k, v in shown.items()))
    return lines
