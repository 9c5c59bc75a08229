"""Evaluations from the command line: datasets, runs followed live, and promotion gates.

Like the other API commands these import only click and the standard library; the client comes
with ``api_command``. ``registry eval run`` is meant for CI: it starts a run, follows its event
stream with a progress bar on stderr (a plain line per update when stderr is not a terminal),
prints the summary, and exits non-zero when the run did not complete or its pass rate is below
``--min-pass-rate``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from registry.cli.api import api_command
from registry.cli.api_commands import read_document
from registry.cli.output import ExitCode, emit, fail, table

if TYPE_CHECKING:
    from prompt_registry_client import RegistryClient

STATES = click.Choice(["staging", "production"])
DEFAULT_SCORERS = [{"kind": "exact_match"}]
BAR_WIDTH = 30
FINISHED = ("completed", "failed", "cancelled")
RECONNECTS = 5  # how often a dropped event stream is followed again before giving up


def dataset_ref(value: str, *, option: str = "--dataset") -> tuple[str, int | None]:
    """``NAME`` (its latest version) or ``NAME@VERSION``."""
    name, at, version = value.rpartition("@")
    if not at:
        return value, None
    if not name or not version.isdigit() or int(version) < 1:
        raise click.BadParameter(f"'{value}' is not NAME or NAME@VERSION", param_hint=option)
    return name, int(version)


CONFIG_LABELS = ("production", "staging", "latest")


def config_ref(value: str) -> dict[str, Any]:
    """``NAME`` (its production version), ``NAME@VERSION`` or ``NAME@LABEL``: the API's config reference."""
    name, at, which = value.rpartition("@")
    if not at:
        return {"name": value}
    if name and which.isdigit() and int(which) >= 1:
        return {"name": name, "version": int(which)}
    if name and which in CONFIG_LABELS:
        return {"name": name, "label": which}
    raise click.BadParameter(f"'{value}' is not NAME, NAME@VERSION or NAME@LABEL", param_hint="--config")


def json_value(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from exc
    except RecursionError as exc:
        raise click.BadParameter("not JSON: nested too deep", param_hint=option) from exc


def read_scorers(file: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A JSON or YAML file holding the scorers (a list), or ``{"scorers": [...], "pass_rule": {...}}``."""
    loaded = read_document(file)
    if isinstance(loaded, list):
        return loaded, None
    if isinstance(loaded, dict) and isinstance(loaded.get("scorers"), list):
        return loaded["scorers"], loaded.get("pass_rule")
    fail(f"{file} must hold a list of scorers, or an object with 'scorers' (and 'pass_rule')", ExitCode.USAGE)


# --------------------------------------------------------------------------- progress and summaries


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def progress_line(progress: dict[str, Any], *, bar: bool) -> str:
    """Items done of the total, the pass rate and the cost so far; with ``bar``, drawn as a bar first."""
    done, total = int(progress.get("items_done") or 0), int(progress.get("total_items") or 0)
    text = f"{done}/{total} items, pass rate {percent(progress.get('pass_rate'))}, cost {progress.get('cost') or 0:g}"
    if progress.get("items_scorer_errors"):
        text += f", {progress['items_scorer_errors']} scorer errors"
    if not bar:
        return f"run {progress['id']}: {progress['status']}, {text}"
    filled = BAR_WIDTH * done // total if total else 0
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {text}"


class Progress:
    """Progress on ``stream``: one line redrawn in place on a terminal, else a line per update."""

    def __init__(self, stream: IO[str], *, tty: bool) -> None:
        self.stream, self.tty = stream, tty
        self.drawn = 0

    def update(self, progress: dict[str, Any]) -> None:
        if not self.tty:
            self.stream.write(progress_line(progress, bar=False) + "\n")
        else:
            line = progress_line(progress, bar=True)
            self.stream.write("\r" + line.ljust(self.drawn))
            self.drawn = len(line)
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = 0


def interval(numbers: dict[str, Any] | None, show: Any) -> str:
    if not numbers or numbers.get("low") is None:
        return ""
    return f" (95% CI {show(numbers['low'])} to {show(numbers['high'])})"


def print_run(run: dict[str, Any]) -> None:
    """The run's summary: what ran, the counts, pass rate and mean score with intervals, tokens and cost."""
    click.echo(
        f"run {run['id']}: {run['status']}, {run['prompt']} v{run['version']} with {run['config']} "
        f"v{run['config_version']} on {run['dataset']}@{run['dataset_version']}"
    )
    click.echo(
        f"items: {run['items_done']} of {run['total_items']} done, {run['items_passed']} passed, "
        f"{run['items_invalid']} invalid, {run['items_errored']} errored"
        + (f", {scorer_errors} scorer errors (no verdict)" if (scorer_errors := run.get("items_scorer_errors")) else "")
    )
    of = " of the items with a verdict" if scorer_errors else ""
    click.echo(f"pass rate{of}: {percent(run.get('pass_rate'))}{interval(run.get('pass_rate_interval'), percent)}")
    mean = run.get("mean_score_interval") or {}
    if mean.get("estimate") is not None:
        click.echo(f"mean score: {mean['estimate']:.3f}{interval(mean, lambda v: f'{v:.3f}')}")
    click.echo(f"cost: {run['cost']:g} ({run['input_tokens']} tokens in, {run['output_tokens']} out)")
    if run.get("error"):
        click.echo(f"error: {run['error']}")


def follow(client: RegistryClient, run_id: int, progress: Progress) -> dict[str, Any]:
    """The run once it has finished, showing its progress meanwhile; a dropped stream is followed again."""
    import httpx
    from prompt_registry_client import ServiceUnavailable

    drops = 0
    try:
        while True:
            try:
                for event, data in client.eval_run_events(run_id):
                    if event == "progress":
                        progress.update(data)
                    elif event == "done":
                        return data
            except (httpx.TransportError, ServiceUnavailable):
                drops += 1
                if drops > RECONNECTS:
                    raise
            else:  # the stream ended without its done event (a registry that stopped, a proxy's limit)
                run = client.get_eval_run(run_id)
                if run["status"] in FINISHED:
                    return run
                drops += 1  # still going: followed again, as a dropped stream is
                if drops > RECONNECTS:
                    return run
    finally:
        progress.end()


def verdict(run: dict[str, Any], min_pass_rate: float | None) -> str | None:
    """Why the run does not pass, or None."""
    if run["status"] != "completed":
        return f"run {run['id']} {run['status']}" + (f": {run['error']}" if run.get("error") else "")
    rate = run.get("pass_rate")
    scorer_errors = run.get("items_scorer_errors") or 0
    if min_pass_rate is not None and scorer_errors:  # those items have no verdict: the rate is not the whole run's
        return (
            f"run {run['id']}: a scorer failed on {scorer_errors} of {run['total_items']} items, which have no "
            f"verdict, so --min-pass-rate {percent(min_pass_rate)} cannot be met"
        )
    if min_pass_rate is not None and (rate is None or rate < min_pass_rate):
        return f"run {run['id']} passed {percent(rate)} of its items, below --min-pass-rate {percent(min_pass_rate)}"
    return None


# --------------------------------------------------------------------------- registry eval


@click.group("eval")
def evals() -> None:
    """Evaluation runs: run a prompt version on a dataset, show, items, compare, cancel."""


@evals.command("run")
@click.argument("prompt")
@click.option("--version", "version", required=True, type=click.IntRange(min=1), help="The prompt version.")
@click.option("--dataset", "dataset", required=True, help="NAME (its latest version) or NAME@VERSION.")
@click.option(
    "--config",
    "config",
    help="Run with this config instead of the version's own (needed when it links none): NAME (its production "
    f"version), NAME@VERSION or NAME@LABEL ({', '.join(CONFIG_LABELS)}).",
)
@click.option("--config-version", type=click.IntRange(min=1), help="Another version of the prompt's own config.")
@click.option(
    "--scorer",
    "scorers",
    multiple=True,
    help='A scorer as JSON, e.g. \'{"kind": "contains", "value": "refund"}\' (repeatable; default exact_match).',
)
@click.option(
    "--scorers-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON or YAML file: a list of scorers, or {scorers: [...], pass_rule: {...}}.",
)
@click.option("--pass-rule", help='How an item passes, as JSON: {"all": true} (default), {"min_score": X}...')
@click.option("--concurrency", type=click.IntRange(1, 64), help="At most this many completions at a time.")
@click.option(
    "--min-pass-rate",
    type=click.FloatRange(0, 1),
    help="Exit 1 when the run's pass rate is below this (0 to 1).",
)
@click.option("--no-wait", is_flag=True, help="Start the run, print its id and return.")
@api_command
def eval_run(
    client: RegistryClient,
    as_json: bool,
    prompt: str,
    version: int,
    dataset: str,
    config: str | None,
    config_version: int | None,
    scorers: tuple[str, ...],
    scorers_file: Path | None,
    pass_rule: str | None,
    concurrency: int | None,
    min_pass_rate: float | None,
    no_wait: bool,
) -> None:
    """Evaluate VERSION of PROMPT on a dataset and follow it to the end.

    Progress (items done, pass rate and cost so far) goes to stderr, the summary to stdout.
    Exits 1 when the run fails or is cancelled, or its pass rate is below --min-pass-rate;
    Ctrl-C stops following (the run goes on; 'registry eval cancel RUN' stops it).
    """
    if no_wait and min_pass_rate is not None:  # the pass rate is known only at the end, which is not waited for
        fail("--min-pass-rate needs the run followed to its end: leave out --no-wait", ExitCode.USAGE)
    name, dataset_version = dataset_ref(dataset)
    run_config = config_ref(config) if config is not None else None
    chosen = [json_value(s, "--scorer") for s in scorers]
    rule = json_value(pass_rule, "--pass-rule") if pass_rule else None
    if scorers_file is not None:
        from_file, file_rule = read_scorers(scorers_file)
        chosen += from_file
        rule = rule if rule is not None else file_rule
    run = client.start_eval_run(
        prompt,
        version,
        name,
        chosen or DEFAULT_SCORERS,
        dataset_version=dataset_version,
        config_version=config_version,
        config=run_config,
        pass_rule=rule,
        concurrency=concurrency,
    )
    if no_wait:
        emit(as_json, run, lambda: click.echo(f"run {run['id']} {run['status']}: {run['total_items']} items"))
        return
    click.echo(f"run {run['id']}: {run['total_items']} items of {run['dataset']}@{run['dataset_version']}", err=True)
    try:
        final = follow(client, run["id"], Progress(sys.stderr, tty=sys.stderr.isatty()))
    except KeyboardInterrupt:
        fail(
            f"stopped following; run {run['id']} goes on ('registry eval cancel {run['id']}' stops it)", ExitCode.ERROR
        )
    emit(as_json, final, lambda: print_run(final))
    problem = verdict(final, min_pass_rate)
    if problem is not None:
        fail(problem, ExitCode.ERROR)


run_id_argument = click.argument("run_id", metavar="RUN", type=click.IntRange(min=1))


@evals.command("list")
@click.option("--prompt", help="Only this prompt's runs.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@api_command
def eval_list(client: RegistryClient, as_json: bool, prompt: str | None, limit: int) -> None:
    """Runs, newest first."""
    import itertools

    rows = list(itertools.islice(client.list_eval_runs(prompt=prompt), limit))
    columns = [
        *("id", "status", "prompt", "version", "dataset", "dataset_version", "items_done", "items_scorer_errors"),
        *("pass_rate", "cost"),
    ]
    emit(as_json, rows, lambda: table(rows, columns))


@evals.command("show")
@run_id_argument
@api_command
def eval_show(client: RegistryClient, as_json: bool, run_id: int) -> None:
    """A run's status, progress and results."""
    run = client.get_eval_run(run_id)
    emit(as_json, run, lambda: print_run(run))


def score_text(item: dict[str, Any]) -> str:
    """Each scorer's verdict and reason: ``exact_match: fail (expected 'y', got 'n')``."""
    return "; ".join(
        f"{s.get('name') or s.get('kind')}: {'pass' if s.get('passed') else 'fail'}"
        + (f" {s['value']:g}" if isinstance(s.get("value"), int | float) and not isinstance(s["value"], bool) else "")
        + (f" ({s['reason']})" if s.get("reason") else "")
        for s in item.get("scores") or []
    )


@evals.command("items")
@run_id_argument
@click.option("--failed", is_flag=True, help="Only the items that did not pass.")
@api_command
def eval_items(client: RegistryClient, as_json: bool, run_id: int, failed: bool) -> None:
    """A run's items in dataset order: output, scores with reasons, latency, tokens, cost."""
    items = list(client.eval_run_items(run_id, failed=failed))
    rows = [{**item, "output": (item.get("output") or "")[:60], "scores": score_text(item)} for item in items]
    columns = ["position", "status", "passed", "score", "output", "scores", "latency_ms", "cost", "error"]
    emit(as_json, items, lambda: table(rows, columns))


@evals.command("compare")
@click.argument("base", type=click.IntRange(min=1))
@click.argument("candidate", type=click.IntRange(min=1))
@api_command
def eval_compare(client: RegistryClient, as_json: bool, base: int, candidate: int) -> None:
    """Compare CANDIDATE with BASE item by item (runs on the same dataset version)."""
    result = client.compare_eval_runs(base, candidate)

    def show() -> None:
        c = result["comparison"]
        click.echo(f"run {candidate} against run {base}: {result['paired_items']} paired items")
        for run_id in c.get("incomplete_runs") or []:
            click.echo(f"run {run_id} did not complete: only the items it stored are compared")
        click.echo(f"pass rate: {percent(c.get('base_pass_rate'))} -> {percent(c.get('candidate_pass_rate'))}")
        click.echo(
            f"pass -> fail: {c['pass_to_fail']}, fail -> pass: {c['fail_to_pass']} "
            f"(McNemar p {c['mcnemar_p']:.4g}, worse p {c['mcnemar_p_worse']:.4g})"
        )
        if c.get("mean_difference") is not None:
            ci = c.get("mean_difference_ci")
            shown = f" (95% CI {ci[0]:.3f} to {ci[1]:.3f})" if ci else ""
            click.echo(f"mean score difference: {c['mean_difference']:+.3f}{shown}, paired t p {c['t_p']:.4g}")
        if c.get("regressed"):
            click.echo(f"regressed items: {', '.join(str(p) for p in c['regressed'])}")
        if c.get("improved"):
            click.echo(f"improved items: {', '.join(str(p) for p in c['improved'])}")

    emit(as_json, result, show)


@evals.command("cancel")
@run_id_argument
@api_command
def eval_cancel(client: RegistryClient, as_json: bool, run_id: int) -> None:
    """Cancel a queued or running run; the items scored so far stay."""
    run = client.cancel_eval_run(run_id)
    emit(as_json, run, lambda: click.echo(f"run {run['id']}: {run['status']}, {run['items_done']} items done"))


# --------------------------------------------------------------------------- registry datasets


@click.group()
def datasets() -> None:
    """Evaluation datasets: list, show, push a version from a file, pull one."""


@datasets.command("list")
@click.option("--prefix", help="Only names starting with this.")
@api_command
def datasets_list(client: RegistryClient, as_json: bool, prefix: str | None) -> None:
    """List datasets."""
    rows = list(client.list_datasets(prefix=prefix))
    emit(as_json, rows, lambda: table(rows, ["name", "latest_version", "description", "updated_at", "updated_by"]))


@datasets.command("show")
@click.argument("name")
@api_command
def datasets_show(client: RegistryClient, as_json: bool, name: str) -> None:
    """Dataset NAME and its versions, newest first."""
    dataset = client.get_dataset(name)
    versions = list(client.list_dataset_versions(name))

    def show() -> None:
        click.echo(f"{dataset['name']}: latest version {dataset['latest_version']}")
        if dataset.get("description"):
            click.echo(f"description: {dataset['description']}")
        table(versions, ["version", "item_count", "sha256", "created_by", "created_at", "commit_message"])

    emit(as_json, {**dataset, "versions": versions}, show)


def file_format(file: Path, given: str | None) -> str:
    return given or ("csv" if file.suffix == ".csv" else "jsonl")


@datasets.command("push")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--format", "given_format", type=click.Choice(["jsonl", "csv"]), help="Default: from the suffix.")
@click.option("--message", default="", help="Commit message of the new version.")
@api_command
def datasets_push(
    client: RegistryClient, as_json: bool, name: str, file: Path, given_format: str | None, message: str
) -> None:
    """Upload FILE (JSON Lines, or CSV) as a new version of NAME, creating the dataset if needed.

    The same items as the newest version make no new version.
    """
    content = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    version, created = client.push_dataset(
        name,
        content,
        format="csv" if file_format(file, given_format) == "csv" else "jsonl",
        commit_message=message,
    )
    outcome = "created" if created else "unchanged: the newest version holds these items"
    emit(
        as_json,
        {**version, "created": created},
        lambda: click.echo(f"{name} v{version['version']} ({version['item_count']} items) {outcome}"),
    )


@datasets.command("pull")
@click.argument("name")
@click.option("--version", "version", type=click.IntRange(min=1), help="Default: the latest.")
@click.option("--format", "given_format", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file (default: stdout)."
)
@api_command
def datasets_pull(
    client: RegistryClient, as_json: bool, name: str, version: int | None, given_format: str, output: Path | None
) -> None:
    """Write a version of NAME as JSON Lines or CSV (what 'datasets push' reads back)."""
    with client.export_dataset(name, version, format="csv" if given_format == "csv" else "jsonl") as chunks:
        if output is None:
            for chunk in chunks:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        # Written beside the target and moved into place at the end, so a broken stream leaves no half file.
        partial = output.with_name(output.name + ".partial")
        try:
            with partial.open("wb") as file:
                for chunk in chunks:
                    file.write(chunk)
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)
    click.echo(f"{name} -> {output}", err=True)


# --------------------------------------------------------------------------- registry gates


@click.group()
def gates() -> None:
    """Promotion gates: what a version must show on a dataset before it enters staging or production."""


def print_gate(gate: dict[str, Any]) -> None:
    where = f"{gate['dataset']}@{gate['dataset_version']}" if gate.get("dataset_version") else gate["dataset"]
    needs = [f"dataset {where}" + ("" if gate.get("dataset_version") else " (its latest version)")]
    if gate.get("min_pass_rate") is not None:
        needs.append(f"pass rate at least {percent(gate['min_pass_rate'])}")
    if gate.get("no_regression"):
        needs.append(f"no significant regression (alpha {gate['alpha']:g})")
    click.echo(f"{gate['prompt']} {gate['state']}: {', '.join(needs)}")
    if gate.get("scoring"):
        click.echo(f"scored with {gate['scoring']}")
    click.echo(f"set by {gate['updated_by']}, {gate['updated_at']}")


@gates.command("get")
@click.argument("prompt")
@click.argument("state", type=STATES)
@api_command
def gates_get(client: RegistryClient, as_json: bool, prompt: str, state: str) -> None:
    """The gate on STATE of PROMPT (exit 3 when there is none)."""
    gate = client.get_gate(prompt, state)
    emit(as_json, gate, lambda: print_gate(gate))


@gates.command("set")
@click.argument("prompt")
@click.argument("state", type=STATES)
@click.option("--dataset", "dataset", required=True, help="NAME (its latest version when checked) or NAME@VERSION.")
@click.option("--min-pass-rate", type=click.FloatRange(0, 1), help="The least pass rate (0 to 1).")
@click.option("--no-regression", is_flag=True, help="No significant regression against the version holding STATE.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True)
@click.option(
    "--scorer",
    "scorers",
    multiple=True,
    help="A scorer the evidence must have been scored with, as JSON (repeatable; without any, a run scored any "
    "way counts).",
)
@click.option(
    "--scorers-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON or YAML file: a list of scorers, or {scorers: [...], pass_rule: {...}}.",
)
@click.option("--pass-rule", help='The evidence\'s pass rule, as JSON: {"all": true} (default), {"min_score": X}...')
@api_command
def gates_set(
    client: RegistryClient,
    as_json: bool,
    prompt: str,
    state: str,
    dataset: str,
    min_pass_rate: float | None,
    no_regression: bool,
    alpha: float,
    scorers: tuple[str, ...],
    scorers_file: Path | None,
    pass_rule: str | None,
) -> None:
    """Gate STATE of PROMPT on evaluation evidence (admin scope)."""
    name, version = dataset_ref(dataset)
    chosen = [json_value(s, "--scorer") for s in scorers]
    rule = json_value(pass_rule, "--pass-rule") if pass_rule else None
    if scorers_file is not None:
        from_file, file_rule = read_scorers(scorers_file)
        chosen += from_file
        rule = rule if rule is not None else file_rule
    gate = client.set_gate(
        prompt,
        state,
        dataset=name,
        dataset_version=version,
        min_pass_rate=min_pass_rate,
        no_regression=no_regression,
        alpha=alpha,
        scorers=chosen or None,
        pass_rule=rule,
    )
    emit(as_json, gate, lambda: print_gate(gate))


@gates.command("rm")
@click.argument("prompt")
@click.argument("state", type=STATES)
@api_command
def gates_rm(client: RegistryClient, as_json: bool, prompt: str, state: str) -> None:
    """Remove the gate on STATE of PROMPT (admin scope)."""
    client.delete_gate(prompt, state)
    emit(as_json, {"prompt": prompt, "state": state, "removed": True}, lambda: click.echo(f"{prompt} {state}: no gate"))


COMMANDS: list[click.Command] = [evals, datasets, gates]
